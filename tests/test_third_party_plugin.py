"""A third-party plugin, packaged on its own, installed for real into a throwaway environment."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import png_bytes, run_cli

PLUGIN = Path(__file__).parent / "plugins" / "aios-memory-colorhist"
IMAGES = ["chelsea", "coffee", "astronaut", "rocket", "horse"]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new venv that sees this interpreter's packages (aios-memory included) plus the plugin, installed by pip."""
    root = tmp_path_factory.mktemp("plugin_env")
    subprocess.run([sys.executable, "-m", "venv", str(root / "env")], check=True)
    env_site = subprocess.run(
        [
            str(root / "env" / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # addsitedir (not a bare path) so that the outer site's .pth files, editable installs among them, apply
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(env_site, "_outer_site.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in outer)
    )
    src = root / "src"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    py = root / "env" / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "-q", str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    return py


def test_plugin_is_listed_only_where_installed(venv):
    listed = json.loads(run_cli("plugins", python=str(venv)).stdout)
    names = {p["name"]: p for p in listed["plugins"]}
    assert names["colorhist"]["package"] == "aios-memory-colorhist"
    assert names["colorhist"]["providers"] == ["colorhist-64"]
    assert "text" in names  # the bundled plugin loads the same way, beside it
    providers = {p["name"]: p for p in listed["providers"]}
    assert providers["colorhist-64"]["modality"] == "image" and providers["colorhist-64"]["dim"] == 64
    outside = json.loads(run_cli("plugins").stdout)
    assert "colorhist" not in {p["name"] for p in outside["plugins"]}


def test_plugin_embeds_image_memories(venv, tmp_path, model_home):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in IMAGES:
        (folder / f"{name}.png").write_bytes(png_bytes(name, 96))
    (folder / "note.txt").write_text("A note about the photos: the cat is called Chelsea.")
    store = tmp_path / "store"
    out = run_cli("--store", str(store), "import", str(folder), "-n", "photos", python=str(venv))
    assert "imported 6 files as 6 memories" in out.stdout
    stats = json.loads(run_cli("--store", str(store), "stats", python=str(venv)).stdout)
    assert stats["tables"]["image"] == {**stats["tables"]["image"], "provider": "colorhist-64", "memories": 5}
    assert stats["tables"]["text"]["memories"] == 1
    hits = json.loads(
        run_cli(
            "--store",
            str(store),
            "search",
            "--file",
            str(folder / "chelsea.png"),
            "-k",
            "2",
            "--json",
            python=str(venv),
        ).stdout
    )
    assert hits[0]["source"].endswith("chelsea.png") and hits[0]["score"] > 0.999
    assert hits[1]["score"] < hits[0]["score"]
    rows = json.loads(
        run_cli(
            "--store",
            str(store),
            "sql",
            "SELECT count(*) AS n, any_value(media_type) AS t FROM image_memories",
            "--json",
            python=str(venv),
        ).stdout
    )
    assert rows == [{"n": 5, "t": "image/png"}]
