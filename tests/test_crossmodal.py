"""The store's text–image engine calls (CLIP), delegating to the registered provider, in a fresh process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from aios_memory_clip.provider import ClipProvider
from aios_memory_converters.clip import convert_clip
from test_clip_model import TINY, make_clip_folder, real_images

NAMES = ["chelsea", "coffee", "rocket", "astronaut"]
LABELS = ["cat", "cup of coffee", "rocket", "astronaut"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossmodal")
    make_clip_folder(root / "hf", TINY, seed=5)
    weights = convert_clip(root / "hf", root / "home" / "models" / "clip")
    images = real_images()
    for n in NAMES:
        (root / f"{n}.png").write_bytes(images[n])
    return root, ClipProvider(weights.parent)


def _run(root, body: str) -> dict:
    script = "import json\nfrom pathlib import Path\nfrom aios_memory import MemoryStore\n" + textwrap.dedent(
        body
    )
    env = {**os.environ, "AIOS_MEMORY_HOME": str(root / "home")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_calls_on_the_store_equal_the_provider(setup):
    root, p = setup
    got = _run(
        root,
        f"""
        s = MemoryStore({str(root / "store")!r})
        imgs = [Path({str(root)!r}) / f"{{n}}.png" for n in {NAMES!r}]
        ids = s.add_many(imgs)
        print(json.dumps({{
            "image": s.encode_image(imgs).tolist(),
            "text": s.encode_text({LABELS!r}).tolist(),
            "sim": s.compute_similarity(imgs, {LABELS!r}).tolist(),
            "best": [ids.index(m.id) for m in s.find_best_matches("a photo of a cat", k=4)],
            "texts": s.find_best_text_matches(imgs[0], {LABELS!r}, k=2),
            "zero": s.zero_shot_classification(imgs[0], {LABELS!r}, templates=["a photo of a {{}}."]),
        }}))
        """,
    )
    payloads = [(root / f"{n}.png").read_bytes() for n in NAMES]
    img, txt = p.encode_image(payloads), p.encode_text(LABELS)
    assert np.allclose(got["image"], img, atol=1e-5) and np.allclose(got["text"], txt, atol=1e-5)
    logits = p.logit_scale * img @ txt.T
    assert np.allclose(got["sim"], logits, atol=1e-3)
    assert got["best"] == [i for i, _ in p.find_best_matches("a photo of a cat", payloads, k=4)]
    order = np.argsort(-logits[0])[:2]
    assert [t for t, _ in got["texts"]] == [LABELS[i] for i in order]
    zero = p.zero_shot_classification(payloads[0], LABELS, templates=("a photo of a {}.",))
    assert got["zero"].keys() == zero.keys() and np.allclose(
        list(got["zero"].values()), list(zero.values()), atol=1e-5
    )
    assert abs(sum(got["zero"].values()) - 1) < 1e-5


def test_engine_calls_without_clip_weights_say_how_to_install(setup, tmp_path, model_home):
    root, _ = setup
    empty = tmp_path / "empty"
    (empty / "home" / "models").mkdir(parents=True)
    shutil.copytree(model_home / "models" / "text", empty / "home" / "models" / "text")  # text only, no CLIP
    shutil.copy(root / "chelsea.png", empty / "chelsea.png")
    got = _run(
        empty,
        f"""
        from aios_memory import AiosMemoryError
        s = MemoryStore({str(empty / "store")!r})
        s.add("text memories keep working without CLIP")
        errors = []
        for call in (lambda: s.encode_text("a cat"), lambda: s.zero_shot_classification(Path({str(empty / "chelsea.png")!r}), ["cat"]),
                     lambda: s.find_best_matches("a cat")):
            try:
                call()
            except AiosMemoryError as exc:
                errors.append(f"{{type(exc).__name__}}: {{exc}}")
        print(json.dumps({{"errors": errors, "text": s.search("memories", k=1)[0].content}}))
        """,
    )
    assert len(got["errors"]) == 3
    assert all(
        e.startswith("ModelNotInstalledError") and "aios-memory models install clip --from PATH" in e
        for e in got["errors"]
    )
    assert got["text"] == "text memories keep working without CLIP"
