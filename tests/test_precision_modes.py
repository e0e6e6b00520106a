"""The opt-in reduced-precision providers (``@bf16``, ``@int8``) against their fp32 provider.

Each mode embeds the same inputs as fp32 and must agree by cosine: MiniLM on its real weights, over a
small retrieval set written here (queries paired with the passage that answers them, among the shared
test sentences as distractors), plus recall@10 against those labels and top-10 overlap with fp32; CLIP
on a seeded tiny checkpoint (no package ships CLIP weights, so this checks numeric agreement, not
semantic quality) over real photographs and their crops and flips. Each variant reports its own
fingerprint, and a store built with one precision refuses another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SENTENCES

BAR = 0.995  # cosine to fp32, min and mean, on retrieval embeddings (issue "Fast")
# MiniLM int8 is per-token: int8 weights per output channel, activations asymmetric int8 per token, int8 x int8
# GEMMs (aios_memory.precision.Int8TokenLinear), value projections in bf16. It replaced torch.ao
# quantize_dynamic (one activation scale per tensor), which reached only min 0.925 / mean 0.974 here.

# (query, the passage that answers it): paraphrases and questions, 30 topics
PAIRS = [
    ("How do plants turn sunlight into food?", "Photosynthesis lets green leaves make sugar from light, water and air."),
    ("Where is the capital of Japan?", "Tokyo has been the seat of Japan's government since 1868."),
    ("best way to store analytics data on disk", "Columnar file formats such as Parquet compress well and scan fast."),
    ("a dog chasing a ball in the park", "The puppy ran across the grass after the tennis ball."),
    ("How does a vaccine train the immune system?", "A vaccine shows the body a harmless piece of a germ so it learns to fight it."),
    ("symptoms of the common cold", "A runny nose, sneezing and a sore throat usually mean a cold."),
    ("how to bake sourdough bread", "Mix starter, flour and water, let the dough rise overnight, then bake it hot."),
    ("the price of bitcoin fell sharply", "Cryptocurrency markets dropped as bitcoin lost a fifth of its value."),
    ("who painted the Mona Lisa", "Leonardo da Vinci painted the portrait of Lisa Gherardini in Florence."),
    ("tips for running a marathon", "Build mileage slowly, taper before race day and drink at every station."),
    ("why is the sky blue", "Air scatters short blue wavelengths of sunlight more than red ones."),
    ("learn to play the guitar", "Start with open chords and practise switching between them every day."),
    ("the football team won the championship", "The club lifted the trophy after beating their rivals in the final."),
    ("how do electric cars charge", "An electric vehicle plugs into a charger that fills its battery pack."),
    ("recipe for tomato soup", "Simmer tomatoes with onion and garlic, then blend and season the soup."),
    ("what causes earthquakes", "Tectonic plates slip along faults and release energy as seismic waves."),
    ("SQL query to count rows in a table", "SELECT count(*) FROM memories returns how many rows the table holds."),
    ("my laptop battery drains too fast", "Dim the screen and close background apps to make the battery last longer."),
    ("the moon landing in 1969", "Apollo 11 put Neil Armstrong and Buzz Aldrin on the lunar surface."),
    ("how to lower blood pressure", "Less salt, regular exercise and losing weight reduce hypertension."),
    ("rain expected this weekend", "Forecasters predict showers on Saturday and Sunday."),
    ("a cat sleeping on the sofa", "The kitten curled up on the couch and dozed all afternoon."),
    ("the stock market reached a record high", "Share prices closed at an all-time peak on Wall Street."),
    ("how do bees make honey", "Bees collect nectar, store it in the comb and fan it until it thickens."),
    ("train tickets to Paris", "Book a rail fare to the French capital on the high-speed line."),
    ("learning a new language quickly", "Daily practice with native speakers speeds up fluency in a foreign tongue."),
    ("a violin concert tonight", "The orchestra's string soloist performs this evening."),
    ("volcano eruption in Iceland", "Lava poured from a fissure on the Reykjanes peninsula."),
    ("how neural networks learn", "Gradient descent adjusts the weights to reduce the loss on training data."),
    ("repair a flat bicycle tyre", "Remove the inner tube, find the puncture, patch it and pump it up again."),
]  # fmt: skip


def text_corpus() -> tuple[list[str], list[str], list[int]]:
    """(queries, corpus, the corpus index answering each query): passages first, then distractors."""
    queries = [q for q, _ in PAIRS]
    distractors = [s for s in SENTENCES if len(s) < 200]  # the long truncation cases add nothing here
    return queries, [p for _, p in PAIRS] + distractors, list(range(len(PAIRS)))


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :k]


def recall_at_k(top: np.ndarray, relevant: list[set[int]]) -> float:
    """Mean fraction of each query's relevant items found in its top k."""
    return float(np.mean([len(set(row) & rel) / len(rel) for row, rel in zip(top, relevant, strict=True)]))


def overlap_at_k(top: np.ndarray, ref: np.ndarray) -> float:
    """Mean fraction of the reference top k that the other top k also holds."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(top, ref, strict=True)]))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def image_retrieval_set() -> tuple[list[Any], list[Any], list[set[int]]]:
    """(query images, corpus images, relevant corpus indices per query): each real photograph is a query;
    the corpus holds 4 views of each (centre crop, left-right flip, corner crop, rotation)."""
    from PIL import Image, ImageOps
    from skimage import data

    queries, corpus, relevant = [], [], []
    names = ("astronaut", "chelsea", "coffee", "rocket", "horse", "camera", "hubble_deep_field")
    names += ("immunohistochemistry", "brick", "clock", "coins", "grass", "gravel", "moon", "page", "text")
    for name in names:
        arr = getattr(data, name)()
        img = Image.fromarray((arr.astype(np.uint8) * 255) if arr.dtype == bool else arr).convert("RGB")
        w, h = img.size
        views = [
            img.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
            ImageOps.mirror(img),
            img.crop((0, 0, 3 * w // 4, 3 * h // 4)),
            img.rotate(10, expand=False),
        ]
        relevant.append(set(range(len(corpus), len(corpus) + len(views))))
        queries.append(img)
        corpus.extend(views)
    return queries, corpus, relevant


# --- MiniLM, real weights ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_modes(model_home):
    from aios_memory.plugins import get_provider

    queries, corpus, answers = text_corpus()
    out = {}
    for name in ("minilm-l6-v2", "minilm-l6-v2@bf16", "minilm-l6-v2@int8"):
        p = get_provider(name)
        out[name.partition("@")[2] or "fp32"] = (p.embed_batch(queries), p.embed_batch(corpus))
    return out, [{a} for a in answers]


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_text_mode_agrees_with_fp32(text_modes, mode):
    modes, relevant = text_modes
    q32, c32 = modes["fp32"]
    q, c = modes[mode]
    assert q.dtype == c.dtype == np.float32 and q.shape == q32.shape and c.shape == c32.shape
    cos = cosines(np.concatenate([q, c]), np.concatenate([q32, c32]))
    top, top32 = top_k(q, c), top_k(q32, c32)
    rec, rec32, ovl = recall_at_k(top, relevant), recall_at_k(top32, relevant), overlap_at_k(top, top32)
    print(
        f"\nMiniLM {mode} vs fp32 on {len(cos)} retrieval embeddings: min cosine {cos.min():.5f}, "
        f"mean {cos.mean():.5f}; recall@10 {rec:.3f} (fp32 {rec32:.3f}), top-10 overlap with fp32 {ovl:.3f}"
    )
    assert rec32 >= 0.9, "the retrieval set must be answerable, or agreement on it would prove little"
    assert cos.min() >= BAR and cos.mean() >= BAR
    assert rec >= rec32 - 0.05 and ovl >= 0.9


def test_int8_token_linear_matches_linear():
    """The int8 Linear on its own: close to float32 with an outlier channel and an outlier token, rows
    quantized independently (a row's output does not depend on the other rows, padding included), and
    fewer rows than torch._int_mm accepts padded internally."""
    import torch
    from torch import nn

    from aios_memory.precision import INT_MM_MIN_ROWS, Int8TokenLinear

    torch.manual_seed(0)
    lin = nn.Linear(384, 1536)
    x = torch.randn(40, 384)
    x[:, 99] += 25.0  # a one-signed outlier channel, as in BERT's residual stream
    x[7] *= 30.0  # an outlier token
    q = Int8TokenLinear(lin)
    with torch.inference_mode():
        y, ref = q(x), lin(x)
        alone = torch.cat([q(x[i : i + 3]) for i in range(0, 39, 3)] + [q(x[39:])])
    cos = torch.nn.functional.cosine_similarity(y, ref)
    print(
        f"\nInt8TokenLinear vs float32: min row cosine {cos.min():.6f}, max abs {(y - ref).abs().max():.4f}"
    )
    assert cos.min() >= 0.9995
    assert 3 < INT_MM_MIN_ROWS and torch.allclose(alone, y, rtol=0, atol=1e-4)
    assert q(x[None, :5]).shape == (1, 5, 1536)


def test_text_modes_are_distinct_providers(model_home):
    from aios_memory.plugins import get_provider, get_providers

    fps = {
        n: get_provider(n).fingerprint() for n in ("minilm-l6-v2", "minilm-l6-v2@bf16", "minilm-l6-v2@int8")
    }
    weights = fps["minilm-l6-v2"].pop("weights")  # the installed file's identity (aios_memory/identity.py)
    assert fps["minilm-l6-v2"] == {"provider": "minilm-l6-v2", "modality": "text", "dim": 384, "version": "1"}
    assert weights.startswith("blake3:") and {f["weights"] for n, f in fps.items() if "@" in n} == {weights}
    assert fps["minilm-l6-v2@int8"]["precision"] == "int8" and fps["minilm-l6-v2@bf16"]["precision"] == "bf16"
    assert len({str(sorted(f.items())) for f in fps.values()}) == 3
    same = {p.directory for n, p in get_providers().items() if n.startswith("minilm-l6-v2")}
    assert len(same) == 1, "every precision reads the one installed weight file"


def test_store_refuses_to_mix_precisions(model_home, tmp_path):
    from aios_memory import MemoryStore
    from aios_memory.errors import ProviderMismatchError

    path = tmp_path / "store"
    store = MemoryStore(path, providers={"text": "minilm-l6-v2@int8"})
    store.add("The puppy ran across the grass after the tennis ball.")
    assert store.provider_for("text").name == "minilm-l6-v2@int8"
    with pytest.raises(ProviderMismatchError, match="minilm-l6-v2@int8"):
        MemoryStore(path, providers={"text": "minilm-l6-v2"}).add("a second memory")
    reopened = MemoryStore(path)  # no choice: the table's own provider, int8
    assert reopened.provider_for("text").name == "minilm-l6-v2@int8"
    hits = reopened.search("a dog chasing a ball in the park", k=1)
    assert len(hits) == 1


def test_unknown_precision_is_refused():
    from aios_memory_clip.provider import ClipProvider
    from aios_memory_text.provider import MiniLMProvider

    from aios_memory.errors import ProviderError

    for cls in (MiniLMProvider, ClipProvider):
        with pytest.raises(ProviderError, match="precision must be one of fp32, bf16, int8"):
            cls(precision="fp16")


# --- CLIP, seeded tiny checkpoint ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder

    root = tmp_path_factory.mktemp("clip_precision")
    make_clip_folder(root / "hf", TINY, seed=5)
    return convert_clip(root / "hf", root / "native").parent


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_clip_mode_agrees_with_fp32(clip_dir, mode):
    from aios_memory_clip.provider import ClipProvider
    from test_clip_model import CAPTIONS

    queries, corpus, relevant = image_retrieval_set()
    fp32, low = ClipProvider(clip_dir), ClipProvider(clip_dir, precision=mode)
    assert low.name == f"clip-vit-b-32@{mode}" and low.fingerprint()["precision"] == mode
    assert abs(low.logit_scale - fp32.logit_scale) <= 1e-6 * fp32.logit_scale  # the temperature stays fp32
    emb = {}
    for key, p in (("fp32", fp32), (mode, low)):
        emb[key] = (p.encode_image(queries), p.encode_image(corpus), p.encode_text(CAPTIONS))
    cos_img = cosines(np.concatenate(emb[mode][:2]), np.concatenate(emb["fp32"][:2]))
    cos_txt = cosines(emb[mode][2], emb["fp32"][2])
    top, top32 = top_k(*emb[mode][:2], k=4), top_k(*emb["fp32"][:2], k=4)
    rec, rec32 = recall_at_k(top, relevant), recall_at_k(top32, relevant)
    print(
        f"\ntiny seeded CLIP {mode} vs fp32: images ({len(cos_img)}) min cosine {cos_img.min():.5f} mean "
        f"{cos_img.mean():.5f}; texts ({len(cos_txt)}) min {cos_txt.min():.5f}; image->image recall@4 "
        f"{rec:.3f} (fp32 {rec32:.3f}), top-4 overlap {overlap_at_k(top, top32):.3f}"
    )
    assert emb[mode][0].dtype == np.float32
    for cos in (cos_img, cos_txt):
        assert cos.min() >= BAR and cos.mean() >= BAR
    assert rec >= rec32 - 0.05
