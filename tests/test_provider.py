"""The EmbeddingProvider base class: lazy, thread-safe loading and a guarded output boundary."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from aios_memory import EmbeddingProvider
from aios_memory.errors import EmptyContentError, ModalityError, ProviderError


class Counting(EmbeddingProvider):
    name = "counting"
    modality = "text"
    dim = 4

    def __init__(self, output=None):
        super().__init__()
        self.loads = 0
        self.output = output

    def _load(self):
        time.sleep(0.05)  # widen the race window
        self.loads += 1

    def _embed(self, items):
        if self.output is not None:
            return self.output(len(items))
        return np.array([[len(s), 1.0, 0.0, 2.0] for s in items], dtype=np.float64)


def test_lazy_and_loaded_once_across_threads():
    p = Counting()
    assert not p.loaded and p.loads == 0  # construction loads nothing
    threads = [threading.Thread(target=p.embed_batch, args=(["abc"],)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.loads == 1 and p.loaded


def test_output_is_float32_and_normalised():
    out = Counting().embed_batch(["a", "abcd"])
    assert out.dtype == np.float32 and out.shape == (2, 4)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert Counting().embed_batch([]).shape == (0, 4)


@pytest.mark.parametrize(
    "output,match",
    [
        (lambda n: np.full((n, 4), np.nan), "NaN or infinite"),
        (lambda n: np.full((n, 4), np.inf), "NaN or infinite"),
        (lambda n: np.ones((n, 5)), "shape"),
        (lambda n: np.ones((n + 1, 4)), "shape"),
        (lambda n: np.zeros((n, 4)), "all-zero"),
        (lambda n: [["a"] * 4] * n, "not numeric"),
    ],
)
def test_bad_provider_output_is_refused(output, match):
    with pytest.raises(ProviderError, match=match):
        Counting(output).embed_batch(["x"])


def test_input_checks_before_the_model():
    p = Counting()
    with pytest.raises(EmptyContentError):
        p.embed_batch(["ok", ""])
    with pytest.raises(ModalityError):
        p.embed_batch([b"bytes"])
    with pytest.raises(ModalityError, match="cannot search it"):
        p.embed_query(b"\x89PNG", "image")
    assert p.loads == 0  # rejected before loading anything


def test_misdeclared_provider():
    class Bad(EmbeddingProvider):
        name = "bad"
        modality = "smell"
        dim = 3

    with pytest.raises(ProviderError, match="must set"):
        Bad()


def test_normalisation_survives_huge_and_tiny_values():
    huge = Counting(lambda n: np.full((n, 4), 3e38, dtype=np.float32)).embed_batch(["x"])
    tiny = Counting(lambda n: np.full((n, 4), 1e-30, dtype=np.float32)).embed_batch(["x"])
    assert np.allclose(huge, 0.5) and np.allclose(tiny, 0.5)


def test_unload_lets_go_of_the_model_and_the_next_call_loads_it_again(model_home):
    """The real MiniLM provider: unload puts back what ``_load`` set; vectors after a reload are equal."""
    from aios_memory.plugins import get_provider

    p = get_provider("minilm-l6-v2")
    first = p.embed_batch(["a sentence about tea"])
    assert p.loaded and p._model is not None
    assert p.unload(idle=3600) is False  # used just now: not idle long enough
    assert p.unload() is True
    assert not p.loaded and p._model is None
    assert p.unload() is False  # nothing loaded
    again = p.embed_batch(["a sentence about tea"])
    assert p.loaded and np.array_equal(first, again)


def test_unload_waits_for_no_running_embed_call():
    started, release = threading.Event(), threading.Event()

    class Slow(EmbeddingProvider):
        name, modality, dim = "slow-unload", "text", 4

        def _load(self) -> None:
            self.weights = np.eye(4, dtype=np.float32)

        def _embed(self, items):
            started.set()
            release.wait(10)
            return np.stack([self.weights[len(t) % 4] for t in items])

    p = Slow()
    t = threading.Thread(target=p.embed_batch, args=(["abc"],))
    t.start()
    assert started.wait(10)
    assert p.unload() is False  # an embed call is running: its model stays
    release.set()
    t.join(10)
    assert p.unload() is True and not hasattr(p, "weights")  # an attribute _load added is gone again


# --- device: cpu, cuda[:N], auto (AIOS_MEMORY_DEVICE) -------------------------------------------------
def test_device_names_are_checked_at_construction(monkeypatch):
    from aios_memory_clip.provider import ClipProvider
    from aios_memory_text.provider import MiniLMProvider

    assert MiniLMProvider().device == "cpu"
    assert MiniLMProvider(device="cuda:1").device == "cuda:1"  # whether it exists is checked at load
    for bad in ("gpu", "cuda:x", "CUDA", "", "cpu ", "cpu\n"):
        with pytest.raises(ProviderError, match="cpu, cuda, cuda:N or auto"):
            MiniLMProvider(device=bad)
    with pytest.raises(ProviderError, match="CPU only"):
        ClipProvider(precision="int8", device="cuda")
    monkeypatch.setenv("AIOS_MEMORY_DEVICE", "tpu")
    with pytest.raises(ProviderError, match=r"\$AIOS_MEMORY_DEVICE"):
        MiniLMProvider()
    monkeypatch.setenv("AIOS_MEMORY_DEVICE", "auto")
    assert MiniLMProvider().device == "auto" and MiniLMProvider(device="cpu").device == "cpu"
    assert MiniLMProvider().info()["device"] == "auto"


def test_cuda_without_a_device_is_a_typed_error_and_auto_runs_on_the_cpu(model_home, tmp_path):
    import torch
    from aios_memory_text.provider import MiniLMProvider

    from aios_memory import MemoryStore
    from aios_memory.plugins import get_provider

    texts = ["a dog runs on the beach", "quarterly revenue grew"]
    want = get_provider("minilm-l6-v2").embed_batch(texts)
    auto = MiniLMProvider(device="auto")
    got = auto.embed_batch(texts)
    if torch.cuda.is_available():  # a GPU machine: the same vectors to the encoders' bar
        assert auto._device.type == "cuda"
        assert float((got * want).sum(1).min()) >= 0.99999
        cuda = MiniLMProvider(device="cuda").embed_batch(texts)
        assert float((cuda * want).sum(1).min()) >= 0.99999
        return
    assert auto._device.type == "cpu" and auto.info()["device"] == "cpu"  # where it runs, once loaded
    np.testing.assert_array_equal(got, want)
    missing = MiniLMProvider(device="cuda")
    with pytest.raises(ProviderError, match="sees no CUDA device"):
        missing.embed_batch(texts)
    assert not missing.loaded
    store = MemoryStore(tmp_path / "s")
    store.add("kept")
    before = store.version
    from aios_memory.hookspecs import hookimpl
    from aios_memory.plugins import register_plugin, unregister_plugin

    class _CudaOnly(MiniLMProvider):
        name = "minilm-on-cuda-test"

    class _Plugin:
        @hookimpl
        def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
            register(_CudaOnly(device="cuda"))

    plugin = _Plugin()
    register_plugin(plugin, name="cuda-only-test")
    try:
        other = MemoryStore(tmp_path / "t", providers={"text": "minilm-on-cuda-test"})
        with pytest.raises(ProviderError, match="sees no CUDA device"):
            other.add("never stored")
        assert other.version == 0
    finally:
        unregister_plugin(plugin)
    assert store.version == before
