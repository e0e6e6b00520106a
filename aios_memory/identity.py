"""Which model made a table's vectors: the weights' content, not only the provider's name.

A table records its provider's ``fingerprint()`` (name, modality, dim, preprocessing ``version``, precision).
Converted models add ``weights``: a BLAKE3 over each tensor's name, dtype, shape and content digest, the
side files that preprocess input (the tokenizer) and the model's config, so a modified checkpoint installed under the same provider
name is a different model. Format-2 weight files record a BLAKE3 per tensor, so the identity costs one
small column read; format-1 files (sha256 per tensor) have their tensors hashed with BLAKE3 once per process,
so converting the same checkpoint into either format gives the same identity.

Tables written before the identity existed record no ``weights``: they are accepted as they are (nothing
can be checked) and keep their fingerprint until ``reembed`` stamps a new one.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from aios_memory import digests
from aios_memory.errors import WeightFileError

# Keys a fingerprint gained after tables were first written: absent on either side means "not known".
LATER_KEYS = ("weights",)

_cache: dict[tuple[str, int, int, int, int], str] = {}
_lock = threading.Lock()


def weights_identity(path: str | Path) -> str:
    """``"blake3:<hex>"`` of the weight file at ``path`` (cached per file size, mtime, inode and ctime:
    a replacement is a new inode, an edit in place a new ctime)."""
    from aios_memory.weights_format import meta_of, open_parquet

    path = Path(path)
    st = os.stat(path)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    pf = open_parquet(path)
    meta = meta_of(path, pf.schema_arrow)
    algo = meta["algo"]
    if algo == "blake3":
        t = pf.read(columns=["name", "dtype", "shape", "blake3"])
        rows = zip(*(t.column(c).to_pylist() for c in ("name", "dtype", "shape", "blake3")), strict=True)
    else:  # format 1: hash the tensors' bytes with BLAKE3 so that both formats agree
        rows = _rehashed(pq.ParquetFile(path))
    h = digests.new("blake3")
    for name, dtype, shape, digest in sorted(rows):
        h.update(json.dumps([name, dtype, list(shape), digest]).encode() + b"\n")
    for name, sha in sorted((meta.get("files") or {}).items()):  # tokenizer.json: preprocessing
        h.update(json.dumps(["file", name, sha]).encode() + b"\n")
    # the model's config (sequence length, layers, ...) shapes the vectors as much as the tensors do
    h.update(json.dumps(["config", meta.get("config")], sort_keys=True).encode() + b"\n")
    out = f"blake3:{h.hexdigest()}"
    with _lock:
        _cache[key] = out
    return out


def _rehashed(pf: pq.ParquetFile) -> list[tuple[str, str, list[int], str]]:
    out = []
    for i in range(pf.num_row_groups):
        t = pf.read_row_group(i, columns=["name", "dtype", "shape", "nbytes", "data"])
        names, dtypes, shapes, sizes = (t.column(c).to_pylist() for c in ("name", "dtype", "shape", "nbytes"))
        data = t.column("data")
        for j, name in enumerate(names):
            buf = data[j].as_buffer()
            if buf is None:
                raise WeightFileError(f"tensor {name!r} has no data")
            view = memoryview(buf)[: sizes[j]]  # the tensor's bytes, without the file's alignment padding
            out.append((name, dtypes[j], shapes[j], digests.digest("blake3", view)))
    return out


def conflicts(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fingerprint keys on which a table's ``recorded`` model and the ``current`` provider differ
    (``LATER_KEYS`` only when both sides know them)."""
    keys = set(recorded) | set(current)
    return sorted(
        k
        for k in keys
        if recorded.get(k) != current.get(k)
        and not (k in LATER_KEYS and (k not in recorded or k not in current))
    )


def same_model(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    return not conflicts(recorded, current)


def describe(fp: dict[str, Any]) -> str:
    """One line naming a fingerprint: provider, precision, dim and a short weights id."""
    parts = [str(fp.get("provider")), f"dim {fp.get('dim')}"]
    if fp.get("precision"):
        parts.append(str(fp["precision"]))
    if fp.get("version") is not None:
        parts.append(f"preprocessing v{fp['version']}")
    if fp.get("weights"):
        parts.append(f"weights {str(fp['weights'])[:19]}")
    extra = {
        k: v
        for k, v in fp.items()
        if k not in {"provider", "modality", "dim", "precision", "version", "weights"}
    }
    if extra:
        parts.append(json.dumps(extra, sort_keys=True))
    return ", ".join(parts)


def mismatch_message(
    modality: str, path: Any, recorded: dict[str, Any], current: dict[str, Any], *, text: bool = False
) -> str:
    """Why ``modality``'s table refuses ``current``, naming both models and the command that migrates;
    ``text``: the model of the table's derived text column (audio transcripts)."""
    keys = conflicts(recorded, current)
    what = "weights" if keys == ["weights"] else ", ".join(keys)
    name = current.get("provider")
    flag, arg, whose = (
        ("--text-provider", "text_provider", "transcript vectors of ")
        if text
        else ("--provider", "provider", "")
    )
    return (
        f"{whose}{modality} memories in {path} were embedded with {describe(recorded)}; the provider "
        f"{name!r} installed here is {describe(current)} (differs in {what}). Re-embed the table with "
        f"`aios-memory --store {path} reembed {modality} {flag} {name}` "
        f"(Python: store.reembed({modality!r}, {arg}={name!r})), or install the model the table was made with"
    )


def same_text_model(state: Any, provider: Any, path: Any) -> Any:
    """``provider`` if it is the model that ``state``'s derived text column (audio transcripts) recorded,
    when it recorded one; otherwise a ``ProviderMismatchError`` naming both."""
    from aios_memory.errors import ProviderMismatchError

    current = provider.fingerprint()
    if state.text_fingerprint and not same_model(state.text_fingerprint, current):
        raise ProviderMismatchError(
            mismatch_message(state.modality, path, state.text_fingerprint, current, text=True)
        )
    return provider
