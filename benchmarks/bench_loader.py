"""Training input pipeline throughput: the per-stage cost per CPU core, and the loader into 8 fake devices.

    python benchmarks/bench_loader.py                    # both parts (builds/reuses a TFDS dataset first)
    python benchmarks/bench_loader.py --part stages --cutoff-step 50
    python benchmarks/bench_loader.py --part loader --workers 0 2

Data: an ``audio_segments`` dataset built with ``audiosr_jax.data.segments.build_dataset`` from ``out/corpus``
when present, else from ``tests/fixtures/corpus_slice`` (cached in ``--data_dir``; ``--memory`` uses random
in-memory segments instead). Figures are audio-seconds of *crops* (``--crop`` samples at 48 kHz, what a
training step consumes) per wall second.

* ``stages`` runs in a child process pinned to ONE core (``sched_setaffinity``) with
  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``, so its figures are per core:
    1. decode + crop: ``source[i]`` (ArrayRecord read + TFDS bytes -> int16) + random crop + int16 -> float;
    2. host low-pass (``degrade.draw_spec`` + ``apply_lowpass``, scipy) + log-mel (jitted JAX on CPU);
    3. device low-pass (``degrade.response_params`` on the host + one jitted ``degrade_on_device`` +
       ``log_mel_spectrogram`` on CPU), with the host filter design and the jitted call shown apart;
    4. STFT-domain low-pass + mel (``data.lowpass = "device_stft"``: ``degrade.log_mels_with_condition``,
       target and condition mels from ONE STFT), as the marginal cost of the condition over the target
       log-mel (both timed here on the same batches) and as the total for both mels; the filter design is
       shown uncached (as in 3) and as the loader runs it (``loader.device_params``, an lru cache, warm).
  Goal: >= 1000x real time per core for low-pass + mel.
* ``loader`` runs in a child process on all visible cores with 8 fake CPU devices: ``make_loader`` batches/s
  and audio-seconds/s into a mesh (8,) for lowpass in {device, host} and each ``--workers`` count; the
  worker streams are checked equal to the in-process stream (same indices, same audio).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SR = 48000


def _source(args):
    """(source, description): a built TFDS split, or random in-memory segments."""
    import numpy as np

    if args.memory:
        rng = np.random.default_rng(0)
        seg = 491520
        src = [{"audio": np.clip(rng.standard_normal(seg) * 3000, -32767, 32767).astype(np.int16),
                "valid_samples": np.int32(seg)} for _ in range(64)]
        return src, f"in-memory: 64 random segments of {seg / SR:.2f} s"
    from audiosr_jax.data import segments

    corpus = pathlib.Path(args.corpus) if args.corpus else (
        ROOT / "out" / "corpus" if (ROOT / "out" / "corpus").is_dir() else ROOT / "tests" / "fixtures" / "corpus_slice")
    data_dir = pathlib.Path(args.data_dir)
    stamp = data_dir / "built_from.txt"
    found = sorted(data_dir.glob("audio_segments/*/*/dataset_info.json"))
    if found and stamp.exists() and stamp.read_text() == str(corpus):
        version_dir = found[0].parent
    else:
        doms = [(d.name, d) for d in sorted(corpus.iterdir()) if d.is_dir() and d.name in segments.DOMAINS]
        t0 = time.perf_counter()
        version_dir = segments.build_dataset(doms, data_dir, overwrite=True)
        stamp.write_text(str(corpus))
        print(f"# built {version_dir} from {corpus} in {time.perf_counter() - t0:.1f} s", flush=True)
    src = segments.open_split(version_dir, "train")
    seg = np.asarray(src[0]["audio"]).shape[-1]
    return src, f"TFDS {version_dir.relative_to(data_dir)} from {corpus}: {len(src)} train segments of {seg / SR:.2f} s"


def _row(name, t, audio_s, cores):
    print(f"{name:<44}{t:9.3f}{audio_s / t:12.0f}{audio_s / t / cores:14.0f}x", flush=True)


def _header(first):
    print(f"{first:<44}{'wall s':>9}{'audio-s/s':>12}{'per core (xRT)':>15}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_stages(args) -> None:
    import jax
    import numpy as np

    from audiosr_jax import degrade as D
    from audiosr_jax.audio import log_mel_spectrogram
    from audiosr_jax.data.loader import crop_offset, device_params

    src, desc = _source(args)
    cores = len(os.sched_getaffinity(0))
    cfg = D.DegradeConfig(cutoff_step_hz=args.cutoff_step)
    n_ex, crop, bsz = args.examples, args.crop, args.batch
    idx = [i % len(src) for i in range(n_ex)]
    audio_s = n_ex * crop / SR

    # 1. decode + crop
    _ = src[idx[0]]  # open files
    t0 = time.perf_counter()
    t_read = 0.0
    crops = []
    for i, r in enumerate(idx):
        tr = time.perf_counter()
        rec = src[r]
        t_read += time.perf_counter() - tr
        a = rec["audio"]
        off = crop_offset(np.random.default_rng([0, 0, r, 1]), a.shape[-1], int(rec["valid_samples"]), crop, 0.5)
        crops.append(a[off : off + crop].astype(np.float32) * np.float32(1 / 32768))
    t_decode = time.perf_counter() - t0
    crops = np.stack(crops)
    batches = [list(range(i, min(i + bsz, n_ex))) for i in range(0, n_ex - bsz + 1, bsz)]
    n_used = sum(len(b) for b in batches)
    audio_b = n_used * crop / SR

    @jax.jit
    def device_step(x, params):
        return log_mel_spectrogram(D.degrade_on_device(x, params))[0]

    @jax.jit
    def stft_step(x, params):
        return D.log_mels_with_condition(x, params)

    @jax.jit
    def target_step(x):
        return log_mel_spectrogram(x)[0]

    specs = [D.draw_spec(cfg, 0, 0, i) for i in range(n_ex)]
    jax.block_until_ready(log_mel_spectrogram(crops[batches[0]]))
    p0 = D.response_params([specs[i] for i in batches[0]])
    jax.block_until_ready((device_step(crops[batches[0]], p0), stft_step(crops[batches[0]], p0),
                           target_step(crops[batches[0]])))

    # 2. host low-pass (on the first --host-examples crops: it is slow) + mel (best of --repeats passes)
    host_batches = batches[: max(1, args.host_examples // bsz)]
    audio_h = sum(len(b) for b in host_batches) * crop / SR
    t_filter = 0.0
    lows = []
    for b in host_batches:
        tf = time.perf_counter()
        lows.append(np.stack([D.apply_lowpass(crops[i], D.draw_spec(cfg, 0, 0, i), SR) for i in b]))
        t_filter += time.perf_counter() - tf
    lows = [lows[k % len(lows)] for k in range(len(batches))]
    t_mel = min(_timed(lambda: [jax.block_until_ready(log_mel_spectrogram(x)) for x in lows])
                for _ in range(args.repeats))

    # 3. device low-pass + mel: filter design on the host (uncached here), then one jitted call per batch
    t_design = _timed(lambda: [D.response_params([specs[i] for i in b]) for b in batches])
    params = [D.response_params([specs[i] for i in b]) for b in batches]
    t_dev = min(_timed(lambda: [jax.block_until_ready(device_step(crops[b], p)) for b, p in zip(batches, params)])
                for _ in range(args.repeats))

    # 4. STFT-domain: both mels from one STFT, against the target mel alone on the same batches (passes
    # interleaved, best of --repeats each, so that load from other processes hits both alike)
    t_both, t_target = [], []
    for _ in range(args.repeats):
        t_target.append(_timed(lambda: [jax.block_until_ready(target_step(crops[b])) for b in batches]))
        t_both.append(_timed(lambda: [jax.block_until_ready(stft_step(crops[b], p)) for b, p in zip(batches, params)]))
    t_both, t_target = min(t_both), min(t_target)
    t_cond = max(t_both - t_target, 0.0)

    def cached_design():
        for b in batches:
            rows = [device_params(specs[i], SR) for i in b]
            {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    cached_design()  # warm the loader's cache (each spec once, as the first epoch over a dataset does)
    t_cached = min(_timed(cached_design) for _ in range(args.repeats))

    print(f"# stages: {desc}")
    print(f"# {n_ex} crops ({len(host_batches) * bsz} through scipy) of {crop} samples ({crop / SR:.2f} s), batch {bsz}, cutoff step {args.cutoff_step} Hz, "
          f"{cores} core(s) (affinity {sorted(os.sched_getaffinity(0))}), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    _header("stage")
    _row("1. decode + crop (int16 -> float)", t_decode, audio_s, cores)
    _row("   of which source[i] (read + decode)", t_read, audio_s, cores)
    _row("2. host low-pass (scipy) + mel (JAX CPU)", t_filter * audio_b / audio_h + t_mel, audio_b, cores)
    _row("   of which scipy low-pass", t_filter, audio_h, cores)
    _row("   of which log-mel (jitted)", t_mel, audio_b, cores)
    _row("3. device low-pass + mel (JAX CPU)", t_design + t_dev, audio_b, cores)
    _row("   of which filter design (response_params)", t_design, audio_b, cores)
    _row("   of which jitted degrade_on_device + mel", t_dev, audio_b, cores)
    _row("4. STFT-domain low-pass + mel (marginal)", t_design + t_cond, audio_b, cores)
    _row("   of which filter design (response_params)", t_design, audio_b, cores)
    _row("   of which jitted: both mels - target mel", t_cond, audio_b, cores)
    _row("   with the loader's cached design (warm)", t_cached + t_cond, audio_b, cores)
    _row("   target log-mel alone (same batches)", t_target, audio_b, cores)
    _row("   both mels, one STFT (jitted)", t_both, audio_b, cores)
    _row("   both mels + filter design", t_design + t_both, audio_b, cores)
    _row("   both mels + cached design (warm)", t_cached + t_both, audio_b, cores)
    _row("   vs 3: target mel + design + degrade + mel", t_target + t_design + t_dev, audio_b, cores)
    _row("   vs 3: the same with the cached design", t_target + t_cached + t_dev, audio_b, cores)
    seg = np.asarray(src[0]["audio"]).shape[-1]
    print(f"# decode reads whole {seg / SR:.2f} s segments for {crop / SR:.2f} s crops: "
          f"{n_ex * seg / SR / t_decode / cores:.0f} segment-audio-s/s per core")


def run_loader(args) -> None:
    import jax
    import numpy as np

    from audiosr_jax.data.loader import LoaderConfig, make_loader

    src, desc = _source(args)
    cores = len(os.sched_getaffinity(0))
    mesh = jax.make_mesh((8,), ("data",))
    print(f"# loader: {desc}")
    print(f"# global batch {args.batch}, crop {args.crop}, {args.loader_batches} timed batches after the first, "
          f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.default_backend()} devices, {cores} core(s), "
          f"cutoff step {args.cutoff_step} Hz")
    print(f"{'lowpass / workers':<22}{'first s':>9}{'batches/s':>11}{'audio-s/s':>11}{'per core':>10}  stream")
    degrade = {"cutoff_step_hz": args.cutoff_step}
    for lowpass in args.lowpass:
        ref = None
        for w in args.workers:
            cfg = LoaderConfig(global_batch_size=args.batch, crop_samples=args.crop, lowpass=lowpass,
                               worker_count=w, seed=0, degrade=dict(degrade))
            t0 = time.perf_counter()
            loader = make_loader(src, cfg, mesh)
            got = [jax.block_until_ready(next(loader))]
            t_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(args.loader_batches):
                got.append(jax.block_until_ready(next(loader)))
            t = time.perf_counter() - t0
            loader.close()
            sig = [(np.asarray(b["index"]), np.asarray(b["audio"])) for b in got]
            if ref is None:
                ref, same = sig, "reference"
            else:
                same = "equal" if all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                                      for a, b in zip(ref, sig)) else "DIFFERENT"
            bps = args.loader_batches / t
            aps = bps * args.batch * args.crop / SR
            print(f"{lowpass + ' / ' + str(w):<22}{t_first:9.2f}{bps:11.2f}{aps:11.0f}{aps / cores:10.0f}  {same}",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["all", "stages", "loader"], default="all")
    ap.add_argument("--corpus", default=None, help="folder of domain subfolders (default out/corpus, else the fixture)")
    ap.add_argument("--data_dir", default="/tmp/audiosr_bench_loader_tfds")
    ap.add_argument("--memory", action="store_true", help="random in-memory segments instead of a TFDS build")
    ap.add_argument("--crop", type=int, default=15360)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--examples", type=int, default=128, help="crops timed in the stages part")
    ap.add_argument("--host-examples", type=int, default=32, help="of which run through the (slow) scipy path")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the jitted stages (best is reported)")
    ap.add_argument("--cutoff-step", type=int, default=1, help="DegradeConfig.cutoff_step_hz (1 = exact)")
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--lowpass", nargs="+", default=["device", "host"], choices=["device", "device_stft", "host", "none"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        (run_stages if args.part == "stages" else run_loader)(args)
        return
    # each part in its own process: XLA_FLAGS and the CPU affinity must be set before jax starts
    argv = [a for a in sys.argv[1:] if not a.startswith("--part")]
    if "--part" in sys.argv:
        i = sys.argv.index("--part")
        argv = sys.argv[1:i] + sys.argv[i + 2 :]
    parts = ["stages", "loader"] if args.part == "all" else [args.part]
    for part in parts:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        flags = env.get("XLA_FLAGS", "")
        if part == "stages":
            env["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
            one = min(os.sched_getaffinity(0))
            pre = lambda: os.sched_setaffinity(0, {one})  # noqa: E731
        else:
            env["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
            pre = None
        cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--child", *argv]
        rc = subprocess.run(cmd, env=env, preexec_fn=pre).returncode
        if rc:
            sys.exit(rc)
        print(flush=True)


if __name__ == "__main__":
    main()
