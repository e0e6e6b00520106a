"""The image provider: CLIP ViT-B/32 (512-d), searched by images or by text. Imports torch only on load.

Besides the provider protocol (image memories, text queries) it carries CLIP's own engine: encode texts
and images, temperature-scaled similarity, best matches either way, and zero-shot classification.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import EmptyContentError, InvalidInputError, ModelNotInstalledError, ProviderError
from aios_memory.provider import ConvertedModelProvider
from aios_memory.weights import read_weights

MODEL_ID = "clip-vit-base-patch32"
IMAGE_BATCH = 32
TEXT_BATCH = 64
DEFAULT_TEMPLATES = ("a photo of a {}.",)
HF_REPO = "openai/clip-vit-base-patch32"
INSTALL_HINT = (
    "no package ships CLIP weights: run `aios-memory models install clip` to convert "
    "openai/clip-vit-base-patch32 from your Hugging Face cache, add `--download` to fetch it there first "
    '(pip install "aios-memory[hf]"), or convert a Hugging Face CLIP folder you have once with '
    "`aios-memory models install clip --from PATH` "
    "(config.json, model.safetensors or pytorch_model.bin, tokenizer.json or vocab.json + merges.txt)"
)


def _tower_of(name: str) -> str | None:
    """Which tower a checkpoint tensor belongs to: ``image``, ``text``, or None (shared, hashed on load)."""
    if name.startswith(("vision_model.", "visual_projection.")):
        return "image"
    if name.startswith(("text_model.", "text_projection.")):
        return "text"
    return None


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    order = np.argsort(-scores, kind="stable")[:k]  # ties: the earlier index first
    return [(int(i), float(scores[i])) for i in order]


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    return k


class ClipProvider(ConvertedModelProvider):
    name = "clip-vit-b-32"
    modality = "image"
    dim = 512
    query_modalities = frozenset({"text"})
    model_name = "clip"
    source_pip = None  # no registry package ships CLIP weights
    # `aios-memory models install clip` without --from: the Hugging Face cache (or --download) of this repo,
    # only these files, and only a snapshot that has every entry of hf_required (a|b: either, a+b: both)
    hf_repo = HF_REPO
    hf_files = ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt")
    hf_required = ("config.json", "model.safetensors", "tokenizer.json|vocab.json+merges.txt")
    version = "1"

    def __init__(
        self, directory: Path | None = None, precision: str = "fp32", device: str | None = None
    ) -> None:
        """``precision``: ``fp32`` (default, exact), or the opt-in ``bf16`` / ``int8`` (dynamic) modes; a
        reduced-precision provider is named ``clip-vit-b-32@bf16`` / ``@int8`` and shares the fp32 weights.
        ``device``: ``cpu``, ``cuda[:N]`` or ``auto`` (default: ``$AIOS_MEMORY_DEVICE``, else cpu)."""
        self._use_precision(precision)
        self._use_device(device)
        super().__init__(directory)
        self._model: Any = None
        self._tokenizer: Any = None
        self._cfg: Any = None
        self._weights: Any = None  # the WeightFile: side files, and the tensors not hashed yet
        self._tower_lock = threading.Lock()

    # --- models ----------------------------------------------------------------------------------------
    def install(self, source: Path | None = None, *, force: bool = False) -> Path:
        if source is None:
            if self.is_installed() and not force:
                return self.weights_path
            raise ModelNotInstalledError(f"CLIP is not installed at {self.weights_path}; {INSTALL_HINT}")
        from aios_memory_converters.clip import convert_clip

        if self.is_installed() and not force:
            return self.weights_path
        return convert_clip(Path(source), self.directory, model=MODEL_ID)

    def _load(self) -> None:
        if not self.is_installed():
            raise ModelNotInstalledError(f"CLIP is not installed at {self.weights_path}; {INSTALL_HINT}")
        import torch

        from aios_memory_clip.model import Clip, ClipConfig

        # fp32 reads the mapped pages as they are, so each tower is hashed at its first use (an image
        # store never pays for the text tower); bf16 / int8 convert every weight now, so hash all now.
        device = self.torch_device()  # a missing CUDA device is refused before the weights are read
        # (a model copied to a GPU is copied whole at load: every tensor is checked first)
        defer = _tower_of if self.precision == "fp32" and device.type == "cpu" else None
        wf = read_weights(self.weights_path, model=MODEL_ID, defer=defer)  # a digest per tensor
        cfg = ClipConfig.from_dict(wf.config)
        if cfg.projection_dim != self.dim:
            raise ProviderError(
                f"{self.weights_path}: projection_dim is {cfg.projection_dim}, expected {self.dim}"
            )
        with torch.device("meta"):
            model = Clip(cfg)
        model.load_state_dict(wf.torch_state_dict(), strict=True, assign=True)  # zero-copy views
        model.eval().requires_grad_(False)
        model.optimize(self.precision)  # bf16 weights or dynamic int8 Linear when asked; fp32: as loaded
        if device.type != "cpu":
            model.to(device)
        self._model, self._cfg, self._weights, self._device = model, cfg, wf, device

    def _tower(self, modality: str) -> None:
        """Check the digests of one tower's tensors before their first use (``read_weights(defer=...)``)."""
        wf = self._weights
        if wf.pending:
            with self._tower_lock:
                wf.verify_pending([n for n in wf.pending if _tower_of(n) == modality])

    def _text_tokenizer(self) -> Any:
        """The BPE tokenizer, read (its sha256 checked) on the first text, not on load: embedding images
        never needs it."""
        if self._tokenizer is None:
            with self._tower_lock:
                if self._tokenizer is None:
                    from tokenizers import Tokenizer

                    tok = Tokenizer.from_file(str(self._weights.check_side_file("tokenizer.json")))
                    tok.enable_truncation(max_length=self._cfg.max_position_embeddings)  # keeps EOT last
                    tok.no_padding()
                    self._tokenizer = tok
        return self._tokenizer

    def _embed(self, items: list[Any]) -> np.ndarray:
        return self.forward(self.preprocess(items))[0]

    def preprocess(self, items: list[Any]) -> np.ndarray:
        """Images -> ``(n, 3, S, S)`` float32 pixels: decode, orient, resize, crop, normalise (no torch)."""
        from aios_memory_clip.preprocess import preprocess_batch

        return preprocess_batch(items, self._cfg.image_size)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """``(n, 3, S, S)`` pixels -> ``(n, 512)`` image embeddings, ``IMAGE_BATCH`` images per pass."""
        import torch

        self._tower("image")
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(batch), IMAGE_BATCH):
                pixels = torch.from_numpy(batch[start : start + IMAGE_BATCH])  # (B, 3, S, S)
                got = self._model.encode_image(pixels.to(self._device))
                out[start : start + len(pixels)] = got.float().cpu().numpy()
        return out, [{} for _ in range(len(batch))]

    def _embed_query(self, items: list[Any], modality: str) -> np.ndarray:
        if modality != "text":
            raise ProviderError(f"provider {self.name!r} has no {modality} query encoder")
        return self._encode_texts(items)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """CLIP token ids: ``<|startoftext|>``, at most 75 text tokens, ``<|endoftext|>``."""
        self.load()
        return [e.ids for e in self._text_tokenizer().encode_batch(texts)]

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        ids = self.tokenize(texts)
        self._tower("text")
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), TEXT_BATCH):
                idx = order[start : start + TEXT_BATCH]
                T = max(len(ids[i]) for i in idx)
                batch = torch.full((len(idx), T), self._cfg.pad_token_id, dtype=torch.long)
                for row, i in enumerate(idx):
                    batch[row, : len(ids[i])] = torch.tensor(ids[i])
                out[idx] = self._model.encode_text(batch.to(self._device)).float().cpu().numpy()
        return out

    # --- engine API --------------------------------------------------------------------------------------
    @staticmethod
    def _texts(texts: str | Sequence[str], what: str = "texts") -> list[str]:
        items = [texts] if isinstance(texts, str) else texts
        if not isinstance(items, Sequence):
            raise InvalidInputError(f"{what} must be a str or a sequence of str, got {type(texts).__name__}")
        items = list(items)
        if not items:
            raise InvalidInputError(f"{what} is empty; give at least one text")
        for t in items:
            if not isinstance(t, str):
                raise InvalidInputError(f"{what} must hold str, got {type(t).__name__}")
            if not t.strip():
                raise EmptyContentError(f"{what} holds an empty or whitespace-only text")
        return items

    @staticmethod
    def _images(images: Any) -> list[Any]:
        single = isinstance(images, (bytes, bytearray, memoryview, Path, np.ndarray)) or hasattr(
            images, "getbands"
        )
        if isinstance(images, str):
            raise InvalidInputError("images must be bytes, PIL images or paths (pathlib.Path), not str")
        items = [images] if single else list(images) if isinstance(images, Sequence) else None
        if items is None:
            raise InvalidInputError(
                f"images must be an image or a sequence of images, got {type(images).__name__}"
            )
        if not items:
            raise InvalidInputError("images is empty; give at least one image")
        if any(isinstance(i, str) for i in items):
            raise InvalidInputError("images must be bytes, PIL images or paths (pathlib.Path), not str")
        return items

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(n, 512)`` float32 L2-normalised text embeddings (one row for a single str)."""
        items = self._texts(texts)
        self.load()
        return self._finish(self._encode_texts(items), len(items))

    def encode_image(self, images: Any) -> np.ndarray:
        """``(n, 512)`` float32 L2-normalised image embeddings of bytes, paths, PIL images or uint8 arrays."""
        items = self._images(images)
        self.load()
        return self._finish(self._embed(items), len(items))

    @property
    def logit_scale(self) -> float:
        """exp of the checkpoint's ``logit_scale``: the inverse temperature applied to cosine similarity."""
        self.load()
        return float(self._model.logit_scale.exp())

    def compute_similarity(self, image_embeddings: Any, text_embeddings: Any) -> np.ndarray:
        """``(n_img, n_txt)`` logits: ``logit_scale * cosine`` (CLIP's ``logits_per_image``)."""
        mats = []
        for what, emb in (("image_embeddings", image_embeddings), ("text_embeddings", text_embeddings)):
            try:
                m = np.asarray(emb, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"{what} is not numeric: {exc}") from exc
            m = m[None] if m.ndim == 1 else m
            if m.ndim != 2 or m.shape[1] != self.dim or not len(m):
                raise InvalidInputError(f"{what} must have shape (n, {self.dim}), got {np.shape(emb)}")
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            if not np.isfinite(m).all() or (norms == 0).any():
                raise InvalidInputError(f"{what} holds zero, NaN or infinite vectors")
            mats.append(m / norms)
        return (self.logit_scale * (mats[0] @ mats[1].T)).astype(np.float32)

    def find_best_matches(self, text: str, images: Any, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` images (indices into ``images``) most similar to ``text``, best first, with cosines."""
        k = _check_k(k)
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        query = self.encode_text(self._texts(text, "text"))
        return _top_k(self.encode_image(images) @ query[0], k)

    def find_best_text_matches(self, image: Any, texts: Sequence[str], k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` texts (indices into ``texts``) most similar to ``image``, best first, with cosines."""
        k = _check_k(k)
        items = self._images(image)
        if len(items) != 1:
            raise InvalidInputError(f"give one image, got {len(items)}")
        return _top_k(self.encode_text(self._texts(texts)) @ self.encode_image(items)[0], k)

    def zero_shot_classification(
        self, image: Any, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> dict[str, float]:
        """``{label: probability}`` for one image: softmax of the logits against each label's prompt
        embedding, the mean of its normalised template embeddings, renormalised (the CLIP paper's ensemble)."""
        names = self._texts(labels, "labels")
        if len(set(names)) != len(names):
            raise InvalidInputError("labels must be distinct")
        prompts = self._texts(templates, "templates")
        if any("{}" not in p for p in prompts):
            raise InvalidInputError("every template must hold a '{}' where the label goes")
        items = self._images(image)
        if len(items) != 1:
            raise InvalidInputError(f"give one image, got {len(items)}")
        emb = self.encode_text([p.format(n) for n in names for p in prompts])  # (L*P, 512), label-major
        emb = emb.reshape(len(names), len(prompts), self.dim).mean(axis=1)  # (L, 512)
        logits = self.compute_similarity(self.encode_image(items), emb)[0]  # renormalises each label
        return {n: float(p) for n, p in zip(names, _softmax(logits.astype(np.float64)), strict=True)}
