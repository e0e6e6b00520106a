"""``aios-memory ui``'s page in headless Chromium (Debian's ``chromium``, driven by Playwright), with
screenshots checked for content and kept when ``$AIOS_MEMORY_SCREENSHOTS`` is set."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ui_helpers
from ui_helpers import (
    CHROMIUM,
    CLIPS,
    NOTES,
    PHOTOS,
    VIEWPORT,
    _need,
)

# module-scoped fixtures, imported so that pytest finds them in this module
server, ui_env = ui_helpers.server, ui_helpers.ui_env


# --- the page in headless Chromium -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(server):
    _need("chromium", CHROMIUM.exists(), "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright", False, 'pip install -e ".[test]"')
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture()
def console_errors() -> list[str]:
    """What the page logged as errors; a test that expects one removes it."""
    return []


@pytest.fixture()
def page(browser, server, console_errors):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = console_errors
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server["login_url"])  # signs in: the token goes into a cookie and leaves the address
    assert page.url == server["url"]
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def screenshot(page, shots: Path, name: str) -> Any:
    """Take, keep (tmp and $AIOS_MEMORY_SCREENSHOTS) and check a screenshot; returns it as an array."""
    from PIL import Image

    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("AIOS_MEMORY_SCREENSHOTS"):
        keep = Path(os.environ["AIOS_MEMORY_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep / path.name)
    img = Image.open(path)
    img.load()
    assert img.format == "PNG" and img.size == (VIEWPORT["width"], VIEWPORT["height"])
    arr = np.asarray(img.convert("RGB")).astype(np.float32)
    print(f"\nscreenshot {path}: {img.size}, pixel std {arr.std():.1f}")
    assert arr.std() > 20, f"{name} looks blank"
    return arr


def region_is_drawn(arr: np.ndarray, box: dict[str, float], background: tuple[int, int, int]) -> float:
    """Fraction of pixels inside ``box`` that differ from ``background`` (and the white page)."""
    x0, y0 = int(box["x"]), int(box["y"])
    crop = arr[y0 : y0 + int(box["height"]), x0 : x0 + int(box["width"])]
    assert crop.size
    plain = (np.abs(crop - np.array(background)).max(-1) < 6) | (crop.min(-1) > 250)
    return float(1 - plain.mean())


def card_texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.textContent)")


def test_page_lists_memories_and_pages(page, server, shots):
    header = page.inner_text("#store-path")
    assert header.startswith("owner · all namespaces") and header.endswith("· version 4")  # four commits
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        (f"aiosm_ui_{server['port']}", True, "Strict")
    ]
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the token
    assert page.locator("#grid .card").count() == 24
    assert page.inner_text("#page-info") == "1–24 of 32"
    bodies = card_texts(page, "#grid .card .body")
    assert set(NOTES) <= set(bodies)
    screenshot(page, shots, "ui-browse-text")
    page.click("#next")
    page.wait_for_function("() => document.querySelector('#page-info').textContent === '25–32 of 32'")
    assert page.locator("#grid .card").count() == 8 and page.is_disabled("#next")
    page.select_option("#browse-namespace", "notes")  # back to the first page, of one namespace
    page.wait_for_function("() => document.querySelector('#page-info').textContent === '1–8 of 8'")


def test_memory_content_is_text_not_markup(page):
    hostile = NOTES[-1]
    assert hostile in card_texts(page, "#grid .card .body")
    assert page.evaluate("document.body.dataset.pwned") is None
    assert page.locator("#grid .card.text img, #grid .card.text b").count() == 0


def test_text_search_shows_ranked_scores(page, server, shots):
    page.fill("#q", "what pet does the user have?")
    page.select_option("#search-modality", "text")
    page.click("#search-button")
    page.wait_for_selector("#results .group[data-modality=text] .card")
    cards = page.locator("#results .group[data-modality=text] .card")
    assert cards.count() == 5
    assert cards.first.locator(".body").inner_text() == "The user's cat is called Miso"
    shown = [float(s) for s in card_texts(page, "#results .card .score .value")]
    expected = [round(s, 4) for _, s, _ in server["expected"]["what pet does the user have?"]]
    assert shown == expected and shown == sorted(shown, reverse=True)
    assert "results for “what pet does the user have?”" in page.inner_text("#status")
    arr = screenshot(page, shots, "ui-text-search")
    box = cards.first.locator(".score").bounding_box()
    assert region_is_drawn(arr, box, (255, 255, 255)) > 0.02  # the score and its bar are painted


def test_all_tables_search_groups_results(page):
    page.fill("#q", "rear left")
    page.click("#search-button")
    page.wait_for_selector("#results .group[data-modality=audio] .card")
    groups = page.eval_on_selector_all("#results .group", "gs => gs.map(g => g.dataset.modality)")
    assert groups == ["text", "image", "audio"]
    top = page.locator("#results .group[data-modality=audio] .card").first
    assert top.locator(".transcript").inner_text() == "Rear, left."


def test_image_search_by_file_input(page, server, shots):
    page.set_input_files("#file", str(server["root"] / "photos" / "chelsea.png"))
    page.wait_for_selector("#results .group[data-modality=image] .card")
    top = page.locator("#results .group[data-modality=image] .card").first
    assert top.get_attribute("data-id") == server["media"]["chelsea.png"]
    assert float(top.locator(".score .value").inner_text()) == 1.0
    assert page.locator("#drop-preview").is_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    arr = screenshot(page, shots, "ui-image-search")
    box = top.locator("img.thumb").bounding_box()
    assert region_is_drawn(arr, box, (236, 239, 243)) > 0.9  # the thumbnail is painted, not the placeholder


def test_image_search_by_dropping_a_file(page, server):
    data = base64.b64encode((server["root"] / "photos" / "rocket.jpg").read_bytes()).decode()
    page.evaluate(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "rocket.jpg", {type: "image/jpeg"}));
            const zone = document.getElementById("drop");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_selector("#results .group[data-modality=image] .card")
    top = page.locator("#results .group[data-modality=image] .card").first
    assert top.get_attribute("data-id") == server["media"]["rocket.jpg"]
    assert "the image rocket.jpg" in page.inner_text("#status")


def test_image_tab_renders_thumbnails(page, server, shots):
    page.click(".tab[data-modality=image]")
    page.wait_for_selector("#grid .card.image img.thumb")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    sizes = page.eval_on_selector_all("#grid img.thumb", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
    assert sorted(alt for alt, _ in sizes) == sorted(f"{n}.{e}" for n, e in PHOTOS.items())
    assert all(0 < w <= 320 for _, w in sizes)
    page.evaluate("window.scrollTo(0, document.getElementById('browse-panel').offsetTop - 10)")
    arr = screenshot(page, shots, "ui-browse-images")
    for i in range(len(PHOTOS)):
        box = page.locator("#grid img.thumb").nth(i).bounding_box()
        assert region_is_drawn(arr, box, (236, 239, 243)) > 0.9, sizes[i]


def test_audio_tab_has_playable_clips(page, server, shots):
    page.click(".tab[data-modality=audio]")
    page.wait_for_selector("#grid .card.audio audio")
    assert page.locator("#grid audio").count() == len(CLIPS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid audio')].every(a => a.readyState >= 1)"
    )
    info = page.eval_on_selector_all(
        "#grid audio",
        """async nodes => Promise.all(nodes.map(async a => {
            const r = await fetch(a.currentSrc);
            const bytes = new Uint8Array(await r.arrayBuffer());
            return {type: r.headers.get('content-type'), n: bytes.length,
                    head: String.fromCharCode(...bytes.slice(0, 4)), duration: a.duration};
        }))""",
    )
    for clip in info:
        assert clip["type"] == "audio/wav" and clip["head"] == "RIFF" and clip["n"] > 10_000
        assert 1.0 < clip["duration"] < 2.0, clip  # Chromium decoded the header: the clip is playable
    transcripts = sorted(card_texts(page, "#grid .card.audio .transcript"))
    assert transcripts == ["Front Center.", "Rear, left."]
    page.evaluate("window.scrollTo(0, document.getElementById('browse-panel').offsetTop - 10)")
    screenshot(page, shots, "ui-browse-audio")


def test_search_error_is_shown(page, console_errors):
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_selector("#status.error")
    assert "neither a known image" in page.inner_text("#status")
    assert page.locator("#results .card").count() == 0
    expected = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    assert console_errors == [expected]
    console_errors.clear()
