"""Dataset build throughput and memory: single process vs Beam (DirectRunner, 1 and 2 worker processes), on a
small corpus and on the same corpus repeated 8x under new names.

    python benchmarks/bench_build.py                       # synthetic corpus: 8 files x 20 s (44.1/48 kHz)
    python benchmarks/bench_build.py --corpus out/corpus --repeats 1,8 --beam_workers 1,2

Each build runs in its own process (``build_dataset``, 10.24 s segments, ``--cache_mb`` of in-memory shuffle
buffer per split in the single-process build); its process tree is polled every
50 ms for the peak RSS of every process: the driver (the build process) and each Beam SDK worker. Printed per
build: files/s, audio hours built per hour of wall time per worker, peak RSS of the driver and of the largest
worker, and per mode the peak ratio 8x / 1x (flat = bounded memory per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_BUILD = """
import json, sys, time
from audiosr_jax.data.segments import build_dataset, read_build_report
t0 = time.perf_counter()
v = build_dataset({"music": [sys.argv[1]]}, sys.argv[2], workers=int(sys.argv[3]), cache_bytes=int(sys.argv[5]),
                  beam_options=None if sys.argv[4] == "-" else sys.argv[4])
rep = read_build_report(v)
print(json.dumps({"seconds": time.perf_counter() - t0, "files": rep["files_used"],
                  "audio_s": sum(f["seconds"] for f in rep["files"]), "segments": sum(rep["segments"].values())}))
"""


def make_corpus(folder: Path, files: int, seconds: float, seed: int = 0) -> None:
    """Band-limited noise with tones, alternating 44.1 kHz stereo and 48 kHz mono FLAC."""
    import soundfile as sf

    folder.mkdir(parents=True)
    for i in range(files):
        rng = np.random.default_rng([seed, i])
        sr, ch = (44_100, 2) if i % 2 == 0 else (48_000, 1)
        n = int(seconds * sr)
        t = np.arange(n) / sr
        x = 0.05 * rng.standard_normal((n, ch)) + 0.2 * np.sin(2 * np.pi * (220 + 40 * i) * t)[:, None]
        sf.write(folder / f"clip_{i:03d}.flac", (x / np.abs(x).max() * 0.8).astype(np.float32), sr, subtype="PCM_16")


def repeat_corpus(src: Path, dst: Path, times: int) -> None:
    """``times`` copies of every file of ``src`` under new names (hard links where possible)."""
    dst.mkdir(parents=True)
    for k in range(times):
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            target = dst / f"r{k:02d}" / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy(f, target)


def run_build(corpus: Path, out: Path, workers: int, beam_workers: int | None, cache_bytes: int) -> dict:
    """One build in a fresh process; returns its summary plus the peak RSS (MB) of driver and workers."""
    import psutil

    beam = "-" if beam_workers is None else (f"--direct_num_workers={beam_workers} "
                                             "--direct_running_mode=multi_processing")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _BUILD, str(corpus), str(out), str(workers), beam, str(cache_bytes)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    root, peak = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        try:
            for p in [root] + root.children(recursive=True):
                with p.oneshot():
                    kind = "worker" if any("sdk_worker_main" in a for a in p.cmdline()) else (
                        "driver" if p.pid == root.pid else "other")
                    peak[p.pid] = (kind, max(peak.get(p.pid, (kind, 0))[1], p.memory_info().rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"build failed ({proc.returncode}) for {corpus} beam={beam}")
    res = json.loads(proc.stdout.read().strip().splitlines()[-1])
    mb = 1 / (1 << 20)
    res.update(wall=wall, driver_mb=max((v for k, v in peak.values() if k == "driver"), default=0) * mb,
               worker_mb=max((v for k, v in peak.values() if k == "worker"), default=0) * mb)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None, help="a folder of audio (default: a synthetic corpus)")
    ap.add_argument("--files", type=int, default=8, help="synthetic corpus: files")
    ap.add_argument("--seconds", type=float, default=20.0, help="synthetic corpus: seconds per file")
    ap.add_argument("--repeats", default="1,8", help="corpus sizes, as copies of the corpus")
    ap.add_argument("--beam_workers", default="1,2", help="DirectRunner worker processes to compare")
    ap.add_argument("--threads", type=int, default=1, help="decode threads of the single-process build")
    ap.add_argument("--cache_mb", type=int, default=16,
                    help="single-process build: serialized examples a split keeps in memory before spilling")
    a = ap.parse_args(argv)
    repeats = [int(r) for r in a.repeats.split(",")]
    modes = [("single", None)] + [("beam", int(w)) for w in a.beam_workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        tmp = Path(tmp)
        base = a.corpus
        if base is None:
            base = tmp / "corpus"
            make_corpus(base, a.files, a.seconds)
        rows = []
        for r in repeats:
            corpus = tmp / f"x{r}"
            repeat_corpus(base, corpus, r)
            for mode, w in modes:
                res = run_build(corpus, tmp / f"out_{mode}_{w}_{r}", a.threads, w, a.cache_mb << 20)
                rows.append((mode, w or 1, r, res))
                shutil.rmtree(tmp / f"out_{mode}_{w}_{r}", ignore_errors=True)
    print(f"{'mode':<7}{'workers':>8}{'corpus':>7}{'files':>6}{'audio h':>9}{'wall s':>8}{'files/s':>9}"
          f"{'audio h/h/worker':>17}{'driver MB':>10}{'worker MB':>10}")
    for mode, w, r, res in rows:
        hours = res["audio_s"] / 3600
        print(f"{mode:<7}{w:>8}{f'{r}x':>7}{res['files']:>6}{hours:>9.3f}{res['wall']:>8.1f}"
              f"{res['files'] / res['wall']:>9.2f}{hours / (res['wall'] / 3600) / w:>17.1f}"
              f"{res['driver_mb']:>10.0f}{(res['worker_mb'] or float('nan')):>10.0f}")
    if len(repeats) > 1:
        lo, hi = min(repeats), max(repeats)
        for mode, w in modes:
            p = {r: res for m, ww, r, res in rows if m == mode and ww == (w or 1)}
            key = "worker_mb" if mode == "beam" else "driver_mb"
            print(f"peak RSS {hi}x / {lo}x, {mode} {w or 1} worker(s), {key.split('_')[0]}: "
                  f"{p[hi][key] / p[lo][key]:.2f}  (driver {p[hi]['driver_mb'] / p[lo]['driver_mb']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
