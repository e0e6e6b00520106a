"""The page as the server sends it (aios_memory/ui/render.py): the caller's counts and newest memories are
in the HTML itself, escaped, for the caller's scope only; a plain ``chromium --headless --screenshot`` and a
browser without JavaScript see them. The server runs as a subprocess (``aios-memory ui``) over a store of
text memories (MiniLM only) with namespaces A, B, a hostile one, and an empty scope."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ui_helpers import CHROMIUM, VIEWPORT, bearer, request, start_ui, stop_ui

HOSTILE = "<script>alert(1)</script> &amp; & {{grid}} \"quoted\" 'single' <img src=x onerror=alert(2)>"
HOSTILE_NS = '<i>ns</i>"&'
HOSTILE_SOURCE = 'notes/<b>x</b>"&y%3Cz.txt'
A_NOTES = ["Agent A's note: the cat is called Miso", "Agent A's note: the flight to Tokyo is on April 3"]
B_NOTES = ["Agent B's secret: the vault code is 4711", "Agent B's secret: the alarm word is heliotrope"]
B_MARKS = ("vault", "4711", "heliotrope", "Agent B")


def need(what: str, ok: bool, install: str) -> None:
    """A missing browser skips a developer's run but fails CI (as ui_helpers does)."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required in CI")
        pytest.skip(f"{what} is not installed: {install}")


@pytest.fixture(scope="module")
def ssr(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from aios_memory import MemoryStore
    from aios_memory.service.tokens import TokenStore

    root = tmp_path_factory.mktemp("ui_render")
    store = MemoryStore(root / "store")
    store.add_many(B_NOTES, namespace="B")
    store.add(HOSTILE, namespace=HOSTILE_NS, source=HOSTILE_SOURCE)
    store.add_many(A_NOTES, namespace="A")
    tokens = TokenStore(store.path)
    made = {
        "a": tokens.create("<b>agent-a</b>", ["A", HOSTILE_NS])[0],
        "empty": tokens.create("nobody", ["nobody"])[0],
        "revoked": tokens.create("short-lived", ["A"]),
    }
    tokens.revoke(made["revoked"][1].id)
    del store
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc, log, url, port, owner = start_ui(root / "store", env, root / "server.log")
    try:
        yield {
            "url": url,
            "port": port,
            "owner": owner,
            "root": root,
            "revoked": made.pop("revoked")[0],
            **made,
        }
    finally:
        stop_ui(proc, log)


def page_html(ssr: dict[str, Any], token: str, cookie: bool = False) -> tuple[int, str]:
    headers = {"Cookie": f"aiosm_ui_{ssr['port']}={token}"} if cookie else bearer(token)
    status, _, body = request(ssr["port"], "GET", "/", headers=headers)
    return status, body.decode()


def slot(html: str, id: str) -> str:
    """The markup inside the element with ``id`` (the grid: up to the pager after it)."""
    if id == "grid":
        return html.split('<div id="grid" class="grid">', 1)[1].split('</div>\n      <div class="pager">')[0]
    match = re.search(rf'<(\w+)[^>]* id="{id}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, id
    return match.group(2)


def test_page_html_holds_the_counts_and_newest_memories_escaped(ssr):
    status, html = page_html(ssr, ssr["owner"])
    assert status == 200
    assert "{{" not in html.replace(escape(HOSTILE), "")  # every slot filled; the memory's braces stay
    assert slot(html, "store-path") == "owner · all namespaces · read and write · version 3"
    assert slot(html, "counts") == (
        '<span class="chip">5 text</span><span class="chip">0 image</span><span class="chip">0 audio</span>'
        '<span class="chip">0 video</span>'
    )
    assert slot(html, "page-info") == "1–5 of 5"
    assert re.search(r'class="tab" aria-selected="true">Text <span class="n">5</span>', html)
    grid = slot(html, "grid")
    bodies = re.findall(r'<p class="body">(.*?)</p>', grid)
    # newest first: A's two (one commit, so in either order), the hostile one, then B's two
    assert set(bodies[:2]) == {escape(t) for t in A_NOTES} and bodies[2] == escape(HOSTILE)
    assert set(bodies[3:]) == {escape(t) for t in B_NOTES}
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;amp; &amp; {{grid}} &quot;quoted&quot;" in grid
    assert f'<span class="chip">{escape(HOSTILE_NS)}</span>' in grid
    name = escape('b>"&y<z.txt')  # what follows the source's last "/", %3C decoded
    assert f'title="{escape(HOSTILE_SOURCE)}">{name}</div>' in grid
    options = re.findall(r'<option value="([^"]*)">([^<]*)</option>', slot(html, "browse-namespace"))
    assert sorted(options[1:]) == sorted(
        [("A", "A (2)"), ("B", "B (2)"), (escape(HOSTILE_NS), f"{escape(HOSTILE_NS)} (1)")]
    )
    assert '<button type="button" id="next" disabled>' in html  # one page: nothing older


def test_page_html_is_the_callers_scope_only(ssr):
    for cookie in (False, True):
        status, html = page_html(ssr, ssr["a"], cookie=cookie)
        assert status == 200
        assert not [m for m in B_MARKS if m in html], "B's memories in A's page"
        assert slot(html, "store-path") == escape(f"<b>agent-a</b> · {HOSTILE_NS}, A · read and write")
        assert slot(html, "counts").startswith('<span class="chip">3 text</span>')
        assert all(escape(t) in html for t in A_NOTES) and escape(HOSTILE) in html
    status, html = page_html(ssr, ssr["empty"])
    assert status == 200 and 'class="card' not in html and "Agent" not in html
    assert '<div class="empty">No text memories here yet.</div>' in slot(html, "grid")


def test_page_without_a_valid_token_holds_no_memories(ssr):
    port, contents = ssr["port"], [*A_NOTES, *B_NOTES, "alert(1)", "Agent"]
    for headers in (
        {},
        bearer("wrong"),
        bearer(ssr["revoked"]),
        bearer("aiosm-owner_" + "x" * 43),
        {"Cookie": f"aiosm_ui_{port}=wrong"},
        {"Cookie": f"aiosm_ui_{port + 1}={ssr['owner']}"},  # another port's cookie
    ):
        for method in ("GET", "HEAD"):
            status, got, body = request(port, method, "/", headers=headers)
            assert status == 401 and got["content-type"].startswith("text/html"), headers
            assert not [c for c in contents if c in body.decode()] and b'class="card' not in body


def chromium(url: str, out: Path, *flags: str) -> np.ndarray:
    """A plain ``chromium --headless --screenshot`` of ``url`` (its own profile), as an RGB array."""
    need("chromium", CHROMIUM.exists(), "apt-get install chromium")
    size = f"--window-size={VIEWPORT['width']},{VIEWPORT['height']}"
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={out.with_suffix('.profile')}", f"--screenshot={out}", size, *flags, url]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    return load(out)


def load(path: Path) -> np.ndarray:
    """A screenshot as an RGB array (kept in ``$AIOS_MEMORY_SCREENSHOTS`` when that is set)."""
    from PIL import Image

    if os.environ.get("AIOS_MEMORY_SCREENSHOTS"):
        keep = Path(os.environ["AIOS_MEMORY_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / path.name).write_bytes(path.read_bytes())
    with Image.open(path) as img:
        assert img.size == (VIEWPORT["width"], VIEWPORT["height"])
        return np.asarray(img.convert("RGB")).astype(np.int16)


def differs(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels that differ between two screenshots of the same size."""
    return float((np.abs(a - b).max(-1) > 24).mean())


def test_plain_chromium_screenshot_shows_the_memories(ssr, tmp_path):
    """The sign-in link, as ``aios-memory ui`` prints it, in a plain headless Chromium: its screenshot is
    taken at the load event, whatever the script has done by then. Against the same page for a token
    whose scope is empty, the memories' cards must show; and it must look like the server's HTML alone
    (drawn with JavaScript off), so there is no flash of other content when the script takes over."""
    url = ssr["url"]
    full = chromium(f"{url}?token={ssr['owner']}", tmp_path / "ui-ssr-full.png")
    empty = chromium(f"{url}?token={ssr['empty']}", tmp_path / "ui-ssr-empty.png")
    print(f"\nplain screenshot vs the empty scope's: {differs(full, empty):.4f} of pixels differ")
    assert differs(full, empty) > 0.01
    with no_script_page(ssr, ssr["owner"]) as page:
        page.screenshot(path=str(tmp_path / "ui-ssr-nojs.png"))
    nojs = load(tmp_path / "ui-ssr-nojs.png")
    print(f"plain screenshot vs the page without JavaScript: {differs(full, nojs):.4f} of pixels differ")
    assert differs(full, nojs) < 0.005 and differs(nojs, empty) > 0.01


@contextmanager
def no_script_page(ssr: dict[str, Any], token: str, script: bool = False) -> Iterator[Any]:
    """The page signed in with ``token``, in a browser with JavaScript off (Playwright, Debian's chromium);
    with ``script``, on, once the script has drawn the page from the API."""
    need("chromium", CHROMIUM.exists(), "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright", False, 'pip install -e ".[test]"')
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport=VIEWPORT, java_script_enabled=script).new_page()
            page.goto(f"{ssr['url']}?token={token}")
            assert page.url == ssr["url"]
            if script:
                page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            yield page
        finally:
            browser.close()


SHOWN = """() => [...document.querySelectorAll('#store-path, #counts, .tab, #grid, .pager, #prev, #next, #browse-namespace')]
    .map(n => [n.innerText, n.getAttribute('aria-selected'), n.disabled])"""


def test_page_without_javascript_shows_text_not_markup(ssr):
    """The server's HTML as a browser without JavaScript builds it: the memories' text, the hostile one
    as text (no element made from it), the counts and the signed-in line."""
    with no_script_page(ssr, ssr["a"]) as page:
        bodies = page.eval_on_selector_all("#grid .card .body", "ns => ns.map(n => n.textContent)")
        assert sorted(bodies[:2]) == sorted(A_NOTES) and bodies[2:] == [HOSTILE]
        assert page.locator("#grid img, #grid b, #grid i, #grid script, #counts *:not(.chip)").count() == 0
        assert page.inner_text("#counts").split() == ["3", "text", "0", "image", "0", "audio", "0", "video"]
        assert page.inner_text("#store-path") == f"<b>agent-a</b> · {HOSTILE_NS}, A · read and write"
        assert page.inner_text("#grid .card .source") == 'b>"&y<z.txt'
        assert page.get_attribute("#grid .card .source", "title") == HOSTILE_SOURCE
        served = page.evaluate(SHOWN)
    with no_script_page(ssr, ssr["a"], script=True) as page:
        assert page.evaluate(SHOWN) == served  # the script draws what the server sent: no flash


def test_cards_of_images_and_audio_match_the_script():
    """render.card draws image and audio memories as app.js's card() does: thumbnails and players by id."""
    from aios_memory.ui.render import card

    image = card({"id": "a b/<c>", "modality": "image", "namespace": "p", "source": "/x/cat%20one.png",
                  "created_at": "2024-04-03T10:30:00+02:00"})  # fmt: skip
    assert '<img class="thumb" src="/api/thumb/a%20b%2F%3Cc%3E" alt="cat one.png">' in image
    assert 'data-id="a b/&lt;c&gt;"' in image and "<span>2024-04-03 08:30:00 UTC</span>" in image
    assert card({"id": "i", "modality": "image", "namespace": "p"}).count('alt="image memory"') == 1
    audio = card({"id": "s", "modality": "audio", "namespace": "n", "transcript": "<Rear>, left.",
                  "start_s": 30.0, "end_s": 60.0})  # fmt: skip
    assert '<p class="body transcript">&lt;Rear&gt;, left.</p>' in audio
    assert '<audio controls preload="metadata" src="/api/media/s#t=30.0,60.0"></audio>' in audio
    assert "<span>30.0 s–60.0 s</span>" in audio
    assert "(no words heard)" in card({"id": "s", "modality": "audio", "namespace": "n"})


def test_search_results_never_outlive_their_query(ssr):
    """A search with results, then an empty query: the results go (the listing below stays); then a
    search nothing matches: a 'no memories match' message, never the previous results."""
    with no_script_page(ssr, ssr["owner"], script=True) as page:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.fill("#q", "which pet does agent A have?")
        page.click("#search-button")
        page.wait_for_selector("#results .card")
        assert page.locator("#results .card .body").first.inner_text() == A_NOTES[0]
        page.fill("#q", "   ")
        page.click("#search-button")
        page.wait_for_function("() => !document.querySelector('#results .card')", timeout=5_000)
        assert page.inner_text("#results") == ""
        assert page.inner_text("#status").startswith("Type something to search for")
        assert page.locator("#grid .card").count() == 5  # the default listing is still there
        page.fill("#q", "which pet does agent A have?")
        page.click("#search-button")
        page.wait_for_selector("#results .card")
        page.select_option("#search-modality", "audio")  # this store has no audio: nothing can match
        page.click("#search-button")
        page.wait_for_selector("#results .no-match", timeout=30_000)
        assert page.locator("#results .card").count() == 0
        assert page.inner_text("#results .no-match") == "No memories match “which pet does agent A have?”."
        assert page.inner_text("#status") == "0 results for “which pet does agent A have?”."
        assert not errors, errors
