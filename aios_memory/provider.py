"""``EmbeddingProvider``: the base class every encoder plugin subclasses.

A provider is cheap to construct and lazy: its weights load on the first embed call, once, under a lock,
so listing or registering providers never touches a model. The base class also guards the boundary in
both directions: it rejects inputs of the wrong modality before they reach the model, and it refuses
vectors that are of the wrong shape, not finite, or zero, before they reach the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aios_memory.errors import EmptyContentError, ModalityError, ProviderError

MODALITIES = ("text", "image", "audio", "video")
_MISSING = object()
_LIFECYCLE = frozenset({"_load_lock", "_loaded", "_busy", "_last_used", "_restore"})


PRECISIONS = ("fp32", "bf16", "int8")
DEVICE_ENV = "AIOS_MEMORY_DEVICE"  # the device of every provider not given one: cpu (default), cuda[:N], auto
_DEVICE_RE = re.compile(r"cpu|auto|cuda(:[0-9]{1,2})?")


class EmbeddingProvider:
    """Turns items of one modality into L2-normalised float32 vectors of a fixed dimension.

    Subclasses set ``name``, ``modality`` and ``dim`` and implement ``_embed``; they may implement
    ``_load`` (called once, lazily) and ``_embed_query`` for each modality in ``query_modalities``
    (e.g. CLIP embeds text queries to search images). Providers with weights to convert set
    ``model_name`` and implement ``install``/``is_installed``.
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    dim: ClassVar[int] = 0
    query_modalities: ClassVar[frozenset[str]] = frozenset()
    model_name: ClassVar[str | None] = None
    source_pip: ClassVar[str | None] = None  # a registry package that ships the weights, if any
    version: ClassVar[str] = "1"
    precision: str = "fp32"  # or an opt-in "bf16" / "int8" (see ``_use_precision``)
    device: str = "cpu"  # where a torch model runs: cpu, cuda[:N] or auto (see ``_use_device``)

    def __init__(self) -> None:
        if not self.name or self.modality not in MODALITIES or int(self.dim) <= 0:
            raise ProviderError(
                f"{type(self).__name__} must set name, modality (one of {MODALITIES}) and a positive dim"
            )
        self._load_lock = threading.Lock()
        self._loaded = False
        self._busy = 0  # embed calls running now (an unload waits for none)
        self._last_used = 0.0  # time.monotonic() of the last embed call's start or end
        self._restore: dict[str, Any] = {}  # what _load replaced: put back by unload()

    # --- lifecycle -------------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Load weights now (otherwise the first embed call does). Thread-safe; runs ``_load`` once."""
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                before = dict(self.__dict__)
                self._load()
                self._restore = {
                    k: before.get(k, _MISSING)
                    for k, v in self.__dict__.items()
                    if k not in _LIFECYCLE and before.get(k, _MISSING) is not v
                }
                self._loaded = True

    def unload(self, idle: float = 0.0) -> bool:
        """Let go of the model (a long-lived service calls this when it has been idle): the attributes
        ``_load`` set go back to what they were, so the next embed call loads again. Does nothing while
        an embed call runs or within ``idle`` seconds of the last one; returns whether it unloaded."""
        with self._load_lock:
            if not self._loaded or self._busy or time.monotonic() - self._last_used < idle:
                return False
            for k, v in self._restore.items():
                if v is _MISSING:
                    self.__dict__.pop(k, None)
                else:
                    self.__dict__[k] = v
            self._restore, self._loaded = {}, False
        return True

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        """Around each embed call: loads the model, and keeps ``unload`` away until the call ends."""
        with self._load_lock:
            self._busy += 1
            self._last_used = time.monotonic()
        try:
            self.load()
            yield
        finally:
            with self._load_lock:
                self._busy -= 1
                self._last_used = time.monotonic()

    def _load(self) -> None:
        """Subclasses read their weights here. Called at most once per instance."""

    # --- embedding -------------------------------------------------------------------------------------
    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        """Embed items of this provider's modality: returns ``(len(items), dim)`` float32, L2-normalised."""
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        for item in items:
            self._check_item(item, self.modality)
        with self._in_use():
            return self._finish(self._embed(items), len(items))

    def expand(self, item: Any) -> list[tuple[Any, dict[str, Any]]]:
        """The rows one stored item becomes: ``[(payload, columns), ...]``. Default: one row, no columns.

        A provider that splits long media (Whisper: 30 s windows) returns one entry per piece, with
        ``start_s``/``end_s`` in ``columns``. Called before embedding; may decode the item.
        """
        return [(item, {})]

    def embed_with_columns(self, items: Sequence[Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Like ``embed_batch``, plus per-item values for the table's extra columns (a transcript)."""
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32), []
        for item in items:
            self._check_item(item, self.modality)
        with self._in_use():
            vectors, columns = self._embed_with_columns(items)
        if len(columns) != len(items):
            raise ProviderError(
                f"provider {self.name!r} returned {len(columns)} column rows for {len(items)} items"
            )
        return self._finish(vectors, len(items)), [dict(c) for c in columns]

    def _embed_with_columns(self, items: list[Any]) -> tuple[Any, list[dict[str, Any]]]:
        return self._embed(items), [{} for _ in items]

    # --- split embedding: CPU preprocessing in worker threads, model compute in one ------------------------
    def preprocess(self, items: list[Any]) -> Any:
        """Pure CPU work on checked items (decode, resize, log-mel): returns what ``forward`` takes.

        Thread-safe and model-free apart from a config read, so an ingestion pipeline runs it in worker
        threads while the model computes the previous batch. Default: the items themselves.
        ``forward(preprocess(items))`` must equal ``_embed_with_columns(items)`` exactly.
        """
        return items

    def forward(self, batch: Any) -> tuple[Any, list[dict[str, Any]]]:
        """Model compute on a ``preprocess`` result: ``(vectors, per-item columns)``. Default: the whole
        of ``_embed_with_columns`` (providers that do not split do all their work here)."""
        return self._embed_with_columns(batch)

    def preprocess_batch(self, items: Sequence[Any]) -> Any:
        """Check items at the boundary, then ``preprocess`` them (loads the model first, for its config)."""
        items = list(items)
        for item in items:
            self._check_item(item, self.modality)
        with self._in_use():
            return self.preprocess(items)

    def embed_preprocessed(self, batch: Any, n: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """``forward`` a ``preprocess_batch`` result of ``n`` items; vectors checked and normalised like
        ``embed_with_columns``, whose result this equals."""
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32), []
        with self._in_use():
            vectors, columns = self.forward(batch)
        if len(columns) != n:
            raise ProviderError(f"provider {self.name!r} returned {len(columns)} column rows for {n} items")
        return self._finish(vectors, n), [dict(c) for c in columns]

    def embed_query(self, query: Any, modality: str | None = None) -> np.ndarray:
        """Embed one query to search this provider's table; ``modality`` is the query's own modality."""
        modality = modality or self.modality
        if modality == self.modality:
            return self.embed_batch([query])[0]
        if modality not in self.query_modalities:
            accepted = sorted({self.modality, *self.query_modalities})
            raise ModalityError(
                f"provider {self.name!r} embeds {self.modality} memories and accepts queries of "
                f"{', '.join(accepted)}; a {modality} query cannot search it"
            )
        self._check_item(query, modality)
        with self._in_use():
            return self._finish(self._embed_query([query], modality), 1)[0]

    def _embed(self, items: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def _embed_query(self, items: list[Any], modality: str) -> np.ndarray:
        raise NotImplementedError

    def _check_item(self, item: Any, modality: str) -> None:
        if modality == "text":
            if not isinstance(item, str):
                raise ModalityError(f"provider {self.name!r} expected text (str), got {type(item).__name__}")
            if not item.strip():
                raise EmptyContentError("text is empty or whitespace only; nothing to embed")
        elif isinstance(item, str):
            raise ModalityError(f"provider {self.name!r} expected {modality} content, got text")

    def _finish(self, out: Any, n: int) -> np.ndarray:
        """Check a subclass's output and normalise it; a third-party bug must never reach the store."""
        try:
            arr = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ProviderError(
                f"provider {self.name!r} returned something that is not numeric: {exc}"
            ) from exc
        if arr.shape != (n, self.dim):
            raise ProviderError(
                f"provider {self.name!r} returned shape {arr.shape}, expected {(n, self.dim)}"
            )
        if not np.isfinite(arr).all():
            raise ProviderError(f"provider {self.name!r} returned NaN or infinite values")
        wide = arr.astype(np.float64)  # float32 norms overflow for huge and underflow for tiny values
        norms = np.linalg.norm(wide, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ProviderError(f"provider {self.name!r} returned an all-zero vector")
        unit = (wide / norms).astype(np.float32)
        if not np.isfinite(unit).all() or (np.abs(unit).sum(axis=1) == 0).any():
            raise ProviderError(f"provider {self.name!r} returned vectors that cannot be normalised")
        return np.ascontiguousarray(unit)

    # --- models ----------------------------------------------------------------------------------------
    def is_installed(self) -> bool:
        """Whether the provider can embed now (its weights are converted); providers without weights: True."""
        return True

    def install(self, source: Path | None = None, *, force: bool = False) -> Path | None:
        """Convert this provider's weights into the model directory; returns the weight file."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What the store records in a table's schema metadata to refuse mixing providers; a reduced
        precision adds ``precision`` (fp32 tables keep the fingerprint they always had)."""
        fp = {
            "provider": self.name,
            "modality": self.modality,
            "dim": int(self.dim),
            "version": self.version,
        }
        return fp if self.precision == "fp32" else {**fp, "precision": self.precision}

    def _use_precision(self, precision: str) -> None:
        """Opt in to a reduced-precision mode (``bf16``, ``int8``): the provider is then named
        ``<name>@<precision>``, so a table records which one embedded it. Applying it is the plugin's."""
        if precision not in PRECISIONS:
            raise ProviderError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32":
            self.name = f"{type(self).name}@{precision}"  # type: ignore[misc]
            self.precision = precision

    def _use_device(self, device: str | None) -> None:
        """Where the model runs: ``device`` if given, else ``$AIOS_MEMORY_DEVICE``, else ``cpu``; ``auto``
        picks CUDA when torch has a device. Checked now (a bad name is a typed error at construction);
        whether CUDA is there is checked when the model loads. Vectors are the same on any device (to the
        encoders' tolerance; TF32 is off), so the device is not part of a table's fingerprint."""
        chosen = device if device is not None else os.environ.get(DEVICE_ENV, "").strip() or "cpu"
        if not isinstance(chosen, str) or not _DEVICE_RE.fullmatch(chosen):
            where = "device" if device is not None else f"${DEVICE_ENV}"
            raise ProviderError(f"{where} must be cpu, cuda, cuda:N or auto, got {chosen!r}")
        if chosen != "cpu" and self.precision == "int8":
            raise ProviderError("int8 (dynamic quantisation) runs on the CPU only; use fp32 or bf16 on CUDA")
        self.device = chosen

    def torch_device(self) -> Any:
        """The ``torch.device`` to load the model onto (called by ``_load``)."""
        import torch

        want = self.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ProviderError(
                    f"provider {self.name!r} was asked for {want}, but torch {torch.__version__} sees no "
                    "CUDA device (a CPU build, or no GPU); use device='cpu' or 'auto'"
                )
            index = int(want.split(":")[1]) if ":" in want else 0
            if index >= torch.cuda.device_count():
                raise ProviderError(
                    f"provider {self.name!r} was asked for {want}; torch sees {torch.cuda.device_count()} CUDA devices"
                )
            torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 matmuls, as on the CPU
            torch.backends.cudnn.allow_tf32 = False
        return torch.device(want)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modality": self.modality,
            "dim": int(self.dim),
            "query_modalities": sorted(self.query_modalities),
            "model": self.model_name,
            "installed": self.is_installed(),
            "loaded": self._loaded,
            "device": str(getattr(self, "_device", None) or self.device),  # once loaded: where it runs
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.modality} dim={self.dim}>"


class ConvertedModelProvider(EmbeddingProvider):
    """A provider whose weights a converter wrote once into ``<model dir>/weights.parquet``.

    ``directory`` defaults to ``$AIOS_MEMORY_HOME/models/<model_name>``; tests and tools may pass another.
    """

    WEIGHTS_FILE: ClassVar[str] = "weights.parquet"

    def __init__(self, directory: Path | None = None) -> None:
        super().__init__()
        self._dir = directory

    @property
    def directory(self) -> Path:
        from aios_memory.home import model_dir

        return self._dir if self._dir is not None else model_dir(self.model_name or self.name)

    @property
    def weights_path(self) -> Path:
        return self.directory / self.WEIGHTS_FILE

    def is_installed(self) -> bool:
        return self.weights_path.is_file()

    def fingerprint(self) -> dict[str, Any]:
        """The base fingerprint plus ``weights``, the identity of the weights' content
        (``aios_memory.identity``): of the weights loaded in this process, if loaded, else of the installed
        file. A loaded model whose file has been replaced since is let go here (when no embed call is
        running), so that the next call loads the file that the identity now names. Absent while nothing
        readable is installed (nothing can be embedded then: loading says why)."""
        fp = super().fingerprint()
        on_disk = self._file_identity()
        loaded = self.__dict__.get("_loaded_weights")
        if self._loaded and loaded is not None and loaded != on_disk and not self.unload():
            on_disk = loaded  # an embed call is running on the loaded weights: they make its vectors
        if on_disk is not None:
            fp["weights"] = on_disk
        return fp

    def _file_identity(self) -> str | None:
        from aios_memory.errors import WeightFileError
        from aios_memory.identity import weights_identity

        try:
            return weights_identity(self.weights_path)
        except (OSError, WeightFileError, ValueError):  # not installed, or damaged: loading says which
            return None

    def load(self) -> None:
        """``EmbeddingProvider.load``, remembering which weights were loaded (read before and after: a
        file replaced meanwhile is loaded again)."""
        for _ in range(3):
            if self._loaded:
                return
            before = self._file_identity()
            super().load()
            if self._file_identity() == before:
                self.__dict__["_loaded_weights"] = before
                return
            self.unload()
        raise ProviderError(f"the weights of {self.name!r} kept changing while they were loaded; try again")

    def unload(self, idle: float = 0.0) -> bool:
        done = super().unload(idle)
        if done:
            self.__dict__.pop("_loaded_weights", None)
        return done
