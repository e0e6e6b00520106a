"""The CLIP provider: lazy registration, the one clear error without weights, the engine API's math against
transformers' outputs, a store round trip, and the converter refusing bad folders."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from aios_memory_clip.provider import ClipProvider
from aios_memory_converters.clip import build_clip_tokenizer, clip_config, clip_shapes, convert_clip
from conftest import run_cli
from test_clip_model import CAPTIONS, TINY, make_clip_folder, real_images, reference_outputs

from aios_memory.errors import (
    EmptyContentError,
    InvalidInputError,
    ModalityError,
    ModelNotInstalledError,
    WeightFileError,
)
from aios_memory.weights import read_weights

HINT = "aios-memory models install clip --from PATH"
LABELS = ["cat", "astronaut", "cup of coffee", "rocket", "horse"]
TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.", "an origami {}!")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_provider")
    model = make_clip_folder(root / "hf", TINY, seed=3)
    weights = convert_clip(root / "hf", root / "models" / "clip")
    return root / "hf", model, ClipProvider(weights.parent)


@pytest.fixture(scope="module")
def images():
    return real_images()


def ref_cos(ref_a: np.ndarray, ref_b: np.ndarray) -> np.ndarray:
    return ref_a @ ref_b.T  # transformers' embeddings are already unit length


# --- laziness and the clear error without weights ----------------------------------------------------------
def test_listing_is_lazy_and_imports_no_torch():
    script = textwrap.dedent(
        """
        import json, sys
        from aios_memory.plugins import get_providers
        p = get_providers()["clip-vit-b-32"]
        print(json.dumps({"info": p.info(), "torch": "torch" in sys.modules, "PIL": "PIL" in sys.modules,
                          "tokenizers": "tokenizers" in sys.modules,
                          "heavy": sorted(m for m in sys.modules if m.startswith("aios_memory_clip.")
                                          and m != "aios_memory_clip.provider")}))
        """
    )
    out = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert out["torch"] is False and out["PIL"] is False and out["tokenizers"] is False and out["heavy"] == []
    info = out["info"]
    assert info["modality"] == "image" and info["dim"] == 512 and info["query_modalities"] == ["text"]
    assert info["model"] == "clip" and info["loaded"] is False


def test_without_weights_one_clear_error(tmp_path, images):
    p = ClipProvider(tmp_path / "nowhere")
    assert not p.is_installed() and p.source_pip is None
    calls = [
        lambda: p.embed_batch([images["chelsea"]]),
        lambda: p.embed_query("a cat", "text"),
        lambda: p.encode_text(["a cat"]),
        lambda: p.encode_image([images["chelsea"]]),
        lambda: p.logit_scale,
        lambda: p.zero_shot_classification(images["chelsea"], LABELS),
        lambda: p.install(),
    ]
    for call in calls:
        with pytest.raises(ModelNotInstalledError, match=HINT.replace(" ", r"\s")) as info:
            call()
        assert "no package ships CLIP weights" in str(info.value)
    assert not p.loaded


def test_cli_install_needs_a_folder_then_converts_it(tiny, tmp_path):
    # an empty Hugging Face cache: a machine with CLIP cached would install from it (tested elsewhere)
    env = {
        "AIOS_MEMORY_HOME": str(tmp_path / "home"),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    proc = run_cli("models", "install", "clip", env=env, check=False)
    assert proc.returncode != 0 and HINT in proc.stderr and "Traceback" not in proc.stderr
    run_cli("models", "install", "clip", "--from", str(tiny[0]), env=env)
    weights = tmp_path / "home" / "models" / "clip" / "weights.parquet"
    assert read_weights(weights, model="clip-vit-base-patch32").files.keys() == {"tokenizer.json"}
    listed = run_cli("models", "list", env=env).stdout
    assert "clip" in listed


# --- the engine API against transformers --------------------------------------------------------------------
def test_provider_protocol(tiny, images):
    folder, model, p = tiny
    ref = reference_outputs(model, folder, list(images.values()), CAPTIONS)
    vectors = p.embed_batch(list(images.values()))
    assert vectors.shape == (len(images), 512) and vectors.dtype == np.float32
    assert np.abs(vectors - ref["image"]).max() <= 1e-5
    q = p.embed_query(CAPTIONS[0], "text")
    assert np.abs(q - ref["text"][0]).max() <= 1e-5
    assert np.abs(p.embed_query(images["coffee"]) - ref["image"][2]).max() <= 1e-5  # image -> image
    with pytest.raises(ModalityError, match="audio"):
        p.embed_query(b"RIFF....WAVE", "audio")
    with pytest.raises(ModalityError):
        p.embed_batch(["text is not an image"])
    assert p.tokenize(["a photo of a cat"])[0][0] == 49406


def test_similarity_and_logit_scale_equal_transformers(tiny, images):
    folder, model, p = tiny
    ref = reference_outputs(model, folder, list(images.values()), CAPTIONS)
    assert p.logit_scale == pytest.approx(42.0, rel=1e-6) == pytest.approx(ref["scale"], rel=1e-6)
    logits = p.compute_similarity(p.encode_image(list(images.values())), p.encode_text(CAPTIONS))
    err = float(np.abs(logits - ref["logits"]).max())
    print(f"\ncompute_similarity vs transformers logits_per_image {logits.shape}: max abs error {err:.2e}")
    assert logits.shape == (len(images), len(CAPTIONS)) and err <= 1e-4
    # unnormalised inputs are normalised first: logits are temperature-scaled cosines
    scaled = p.compute_similarity(3.0 * ref["image"][:2], 0.5 * ref["text"])
    assert np.abs(scaled - ref["logits"][:2]).max() <= 1e-4


def test_best_matches_rank_like_transformers(tiny, images):
    folder, model, p = tiny
    names = list(images)
    ref = reference_outputs(model, folder, list(images.values()), CAPTIONS)
    cos = ref_cos(ref["text"], ref["image"])  # (n_txt, n_img)
    for t in (0, 2, 6):
        got = p.find_best_matches(CAPTIONS[t], list(images.values()), k=4)
        want = np.argsort(-cos[t])[:4]
        assert [i for i, _ in got] == want.tolist()
        assert np.allclose([s for _, s in got], cos[t][want], atol=1e-5)
    got = p.find_best_text_matches(images[names[1]], CAPTIONS, k=100)  # k past the end: all, best first
    want = np.argsort(-cos[:, 1])
    assert [i for i, _ in got] == want.tolist() and len(got) == len(CAPTIONS)
    assert np.allclose([s for _, s in got], cos[want, 1], atol=1e-5)


def test_zero_shot_probabilities_are_softmax_of_scaled_cosines(tiny, images):
    folder, model, p = tiny
    prompts = [t.format(label) for label in LABELS for t in TEMPLATES]
    ref = reference_outputs(model, folder, [images["chelsea"]], prompts)
    label_emb = ref["text"].reshape(len(LABELS), len(TEMPLATES), -1).mean(1)  # the paper's prompt ensemble
    label_emb /= np.linalg.norm(label_emb, axis=1, keepdims=True)
    logits = ref["scale"] * (ref["image"][0] @ label_emb.T)
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = p.zero_shot_classification(images["chelsea"], LABELS, templates=TEMPLATES)
    assert list(got) == LABELS
    err = float(np.abs(np.array(list(got.values())) - want).max())
    print(
        f"\nzero-shot ({len(LABELS)} labels x {len(TEMPLATES)} templates) vs transformers: max abs error {err:.2e}"
    )
    assert err <= 1e-5 and math.isclose(sum(got.values()), 1.0, abs_tol=1e-9)
    single = p.zero_shot_classification(images["chelsea"], LABELS)  # default template
    ref1 = reference_outputs(model, folder, [images["chelsea"]], [f"a photo of a {x}." for x in LABELS])
    want1 = torch.softmax(torch.from_numpy(ref1["logits"][0]).double(), 0).numpy()
    assert np.abs(np.array(list(single.values())) - want1).max() <= 1e-5


def test_engine_api_validates_inputs(tiny, images):
    _, _, p = tiny
    img = images["chelsea"]
    cases = [
        (InvalidInputError, "labels is empty", lambda: p.zero_shot_classification(img, [])),
        (EmptyContentError, "empty", lambda: p.zero_shot_classification(img, ["cat", " "])),
        (InvalidInputError, "distinct", lambda: p.zero_shot_classification(img, ["cat", "cat"])),
        (InvalidInputError, "must hold str", lambda: p.zero_shot_classification(img, ["cat", 3])),
        (InvalidInputError, "'{}'", lambda: p.zero_shot_classification(img, ["cat"], templates=("a photo",))),
        (InvalidInputError, "one image", lambda: p.zero_shot_classification([img, img], ["cat"])),
        (InvalidInputError, "texts is empty", lambda: p.encode_text([])),
        (EmptyContentError, "empty", lambda: p.encode_text([""])),
        (InvalidInputError, "must hold str", lambda: p.encode_text([b"bytes"])),
        (InvalidInputError, "must be a str", lambda: p.encode_text(42)),
        (InvalidInputError, "images is empty", lambda: p.encode_image([])),
        (InvalidInputError, "not str", lambda: p.encode_image("cat.png")),
        (InvalidInputError, "cannot read an image", lambda: p.encode_image([42])),
        (InvalidInputError, "text must be a str", lambda: p.find_best_matches(["a", "b"], [img])),
        (InvalidInputError, "k must be", lambda: p.find_best_matches("cat", [img], k=0)),
        (InvalidInputError, "k must be", lambda: p.find_best_text_matches(img, ["cat"], k=True)),
        (
            InvalidInputError,
            r"shape \(n, 512\)",
            lambda: p.compute_similarity(np.ones((2, 3)), np.ones((1, 512))),
        ),
        (InvalidInputError, "zero", lambda: p.compute_similarity(np.zeros((1, 512)), np.ones((1, 512)))),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind, match=message):
            call()
    assert p.encode_text("one text").shape == (1, 512)  # a lone str is one text
    assert p.encode_image(img).shape == (1, 512)  # lone bytes are one image


def test_store_round_trip_in_a_fresh_process(tiny, images, tmp_path):
    """MemoryStore with the registered provider: image memories found by a text query, ranked as ours."""
    folder, _, p = tiny
    home = tmp_path / "home"
    shutil.copytree(p.directory, home / "models" / "clip")
    names = ["chelsea", "coffee", "rocket", "astronaut"]
    for n in names:
        (tmp_path / f"{n}.png").write_bytes(images[n])
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from aios_memory import MemoryStore
        s = MemoryStore({str(tmp_path / "store")!r})
        ids = s.add_many([Path({str(tmp_path)!r}) / f"{{n}}.png" for n in {names!r}])
        hits = s.search("a photo of a cat", k=4, modality="image")
        print(json.dumps({{"order": [ids.index(h.id) for h in hits], "scores": [h.score for h in hits],
                          "provider": hits[0].provider}}))
        """
    )
    env = {**os.environ, "AIOS_MEMORY_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = p.find_best_matches("a photo of a cat", [images[n] for n in names], k=4)
    assert got["provider"] == "clip-vit-b-32" and got["order"] == [i for i, _ in want]
    assert np.allclose(got["scores"], [s for _, s in want], atol=1e-4)


# --- converter errors -----------------------------------------------------------------------------------------
def test_converter_reads_pytorch_bin_bit_exact(tiny, tmp_path):
    folder, model, _ = tiny
    legacy = tmp_path / "bin"
    shutil.copytree(folder, legacy)
    (legacy / "model.safetensors").unlink()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # older checkpoints hold this buffer
    torch.save(state, legacy / "pytorch_model.bin")
    wf = read_weights(convert_clip(legacy, tmp_path / "out"))
    assert wf.source["format"] == "pytorch" and wf.source["tokenizer"] == "vocab.json+merges.txt"
    cfg = clip_config(json.loads((folder / "config.json").read_text()))
    assert {k: t.shape for k, t in wf.tensors.items()} == clip_shapes(cfg)
    for name, t in wf.tensors.items():  # no transposes: every tensor copied bit for bit
        assert np.array_equal(t.numpy(), model.state_dict()[name].numpy()), name
    assert wf.config["eos_token_id"] == 49407 and wf.config["pad_token_id"] == 49407


def test_converter_refuses_bad_folders(tiny, tmp_path):
    folder, _, _ = tiny
    cfg = json.loads((folder / "config.json").read_text())
    out = tmp_path / "out"

    def variant(name, config=None, drop=()):
        d = tmp_path / name
        shutil.copytree(folder, d)
        if config is not None:
            (d / "config.json").write_text(json.dumps(config))
        for f in drop:
            (d / f).unlink()
        return d

    empty = tmp_path / "empty"
    empty.mkdir()
    nopost = variant("nopost")  # a tokenizer.json that adds no <|startoftext|> / <|endoftext|>
    tok = build_clip_tokenizer(folder / "vocab.json", folder / "merges.txt")
    tok.save(str(nopost / "tokenizer.json"))
    raw = json.loads((nopost / "tokenizer.json").read_text())
    (nopost / "tokenizer.json").write_text(json.dumps({**raw, "post_processor": None}))
    cases = [
        (empty, "no config.json"),
        (variant("gpt", {**cfg, "model_type": "gpt2"}), "expected 'clip'"),
        (
            variant("wide", {**cfg, "vision_config": {**cfg["vision_config"], "hidden_size": 128}}),
            "has shape",
        ),
        (variant("deep", {**cfg, "text_config": {**cfg["text_config"], "num_hidden_layers": 3}}), "missing"),
        (variant("proj", {**cfg, "projection_dim": 256}), "has shape"),
        (variant("act", {**cfg, "text_config": {**cfg["text_config"], "hidden_act": "relu"}}), "hidden_act"),
        (variant("eos", {**cfg, "text_config": {**cfg["text_config"], "eos_token_id": 7}}), "eos_token_id"),
        (variant("notok", drop=("vocab.json", "merges.txt")), "no tokenizer"),
        (variant("nomerges", drop=("merges.txt",)), "no tokenizer"),
        (nopost, "does not wrap texts"),
        (
            variant("noweights", drop=("model.safetensors",)),
            "neither model.safetensors nor pytorch_model.bin",
        ),
    ]
    for src, message in cases:
        with pytest.raises(WeightFileError, match=message):
            convert_clip(src, out)
    assert not out.exists() or not (out / "weights.parquet").exists()


def test_tampered_tokenizer_is_refused_on_load(tiny, tmp_path):
    _, _, p = tiny
    copy = tmp_path / "clip"
    shutil.copytree(p.directory, copy)
    tok = json.loads((copy / "tokenizer.json").read_text())
    tok["model"]["vocab"]["cat</w>"] = 0
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(WeightFileError, match="does not match the sha256"):
        ClipProvider(copy).encode_text(["a cat"])


def test_pil_and_path_inputs(tiny, images, tmp_path):
    from PIL import Image

    _, _, p = tiny
    path = tmp_path / "c.png"
    path.write_bytes(images["chelsea"])
    a = p.encode_image([images["chelsea"], Image.open(io.BytesIO(images["chelsea"])), path])
    assert np.abs(a - a[0]).max() <= 1e-6


def _flip_byte_of(weights, name: str) -> None:
    """Flip one byte inside tensor ``name``'s data in a weight file (its hash stays as recorded)."""
    wf = read_weights(weights, verify=False)
    t = wf.tensors[name]
    assert wf.mapped and t.offset > 0
    raw = bytearray(weights.read_bytes())
    raw[t.offset + t.buffer.size // 2] ^= 0x40
    del wf, t
    weights.write_bytes(bytes(raw))


def test_each_tower_is_hashed_before_its_first_use(tiny, images, tmp_path):
    """fp32 CLIP hashes the vision tower at the first image and the text tower at the first text: a
    damaged text tower never blocks image embedding, and is refused on every text call."""
    _, _, p = tiny
    for tower, bad_name in (
        ("text", "text_model.encoder.layers.0.mlp.fc1.weight"),
        ("image", "vision_model.encoder.layers.0.mlp.fc1.weight"),
    ):
        copy = tmp_path / f"clip-{tower}"
        shutil.copytree(p.directory, copy)
        _flip_byte_of(copy / "weights.parquet", bad_name)
        damaged = ClipProvider(copy)
        damaged.load()  # the towers are not hashed yet: loading succeeds
        good, bad = (
            (damaged.encode_image, damaged.encode_text)
            if tower == "text"
            else (damaged.encode_text, damaged.encode_image)
        )
        good_arg, bad_arg = (
            ([images["chelsea"]], ["a cat"]) if tower == "text" else (["a cat"], [images["chelsea"]])
        )
        ref = p.encode_image(good_arg) if tower == "text" else p.encode_text(good_arg)
        assert np.abs(good(good_arg) - ref).max() == 0.0
        for _ in range(2):
            with pytest.raises(WeightFileError, match=f"blake3 mismatch in tensor '{bad_name}'"):
                bad(bad_arg)
    with_bf16 = ClipProvider(
        tmp_path / "clip-text", precision="bf16"
    )  # converts every weight: hashes all now
    with pytest.raises(WeightFileError, match="blake3 mismatch"):
        with_bf16.load()
