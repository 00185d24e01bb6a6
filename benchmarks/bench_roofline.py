"""Where the time goes on this machine, stage by stage, against its measured fp32 peak.

    python benchmarks/bench_roofline.py --width full --json roofline.json      # reference first, then ours
    python benchmarks/bench_roofline.py --width tiny --no-reference            # smoke test (seconds)
    python benchmarks/bench_roofline.py --width full --no-reference --stages vocoder,vae_decode

For each of our inference stages (bench_stages.build_stages: front-end, VAE encode, one UNet call, the
guidance pair as one batched call, VAE decode, vocoder, post-processing) it prints one row: the FLOPs and
bytes XLA's cost analysis gives for the compiled program, the steady-state seconds (best of `--repeats`
after the compiling call), the achieved GFLOP/s, that as a fraction of this machine's fp32 peak measured in
the same run, and the reference's seconds for the same stage (PyTorch AudioSR in `.refenv`, run first as a
subprocess so the two never share the cores; `reference/ours` > 1 means ours is faster).

Two peaks are measured before the stages: a jitted [n, n] @ [n, n] fp32 matmul (2n³ FLOPs, best of several)
and the best of one 3×3 convolution per UNet level (model_channels·channel_mult[l] channels at the latent
resolution halved l times, batch 2 as in the guidance pair; the widest level, last, is printed too), whose
FLOPs are XLA's count as for the stages.
The front-end's FLOPs are those of its jitted log-mel only (the wav read and the elliptic low-pass run in
numpy); its seconds are the whole front-end's. XLA counts a convolution's taps that fall on real input
only (zero padding is not counted), so small feature maps count fewer than 2·k²·C_in·C_out·H·W.

The machine is shared: the 1-min load average at the start and end of our part (and of the reference's) is
printed and saved. XLA_FLAGS (set before the run) are recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_stages  # noqa: E402
from reference_stages import reference_stage_timings  # noqa: E402

STAGES = ("frontend", "vae_encode", "unet", "unet_cfg_pair", "vae_decode", "vocoder", "postprocess")
# our stage key → (reference key, factor): the reference runs the guidance pair as two UNet calls
REFERENCE_KEYS = {"frontend": ("frontend_s", 1), "vae_encode": ("vae_encode_s", 1), "unet": ("unet_s", 1),
                  "unet_cfg_pair": ("unet_s", 2), "vae_decode": ("vae_decode_s", 1),
                  "vocoder": ("vocoder_s", 1)}


def log(msg: str) -> None:
    """Print a progress line to stdout at once."""
    print(msg, flush=True)


def cost_of(compiled) -> dict:
    """XLA's cost analysis of a compiled program → {"flops": float | None, "bytes": float | None}.

    `compiled.cost_analysis()` returns a dict, a one-element list of dicts (older jax) or None, or raises
    where the backend has none; a missing or non-positive figure comes back as None."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends/versions do not implement it
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    cost = cost or {}

    def figure(key):
        v = cost.get(key)
        return float(v) if v is not None and v > 0 else None

    return {"flops": figure("flops"), "bytes": figure("bytes accessed")}


def best_seconds(fn, repeats: int = 3, min_seconds: float = 0.0) -> float:
    """Best wall seconds of `fn()` (blocked until ready) over at least `repeats` calls and `min_seconds`."""
    import jax

    best, spent, n = math.inf, 0.0, 0
    while n < repeats or spent < min_seconds:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def matmul_peak(n: int = 2048, min_seconds: float = 2.0) -> dict:
    """fp32 [n, n] @ [n, n] jitted on the default device, best of several after a compiling call.
    Returns {"n", "flops" (2n³), "s", "gflops"}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.float32) for _ in range(2))
    f = jax.jit(jnp.dot).lower(a, b).compile()
    jax.block_until_ready(f(a, b))
    s = best_seconds(lambda: f(a, b), min_seconds=min_seconds)
    flops = 2.0 * n ** 3
    return {"n": n, "flops": flops, "s": s, "gflops": flops / s / 1e9}


def unet_level_convs(unet_config, latent: tuple[int, int, int], batch: int = 2) -> list[tuple[tuple, tuple]]:
    """[(input NHWC shape, HWIO kernel shape)] of a 3×3 conv at each UNet level, widest last: level l has
    model_channels·channel_mult[l] channels at the latent (h, w) halved l times."""
    h, w, _ = latent
    out = []
    for lvl, mult in enumerate(unet_config.channel_mult):
        ch = unet_config.model_channels * mult
        out.append(((batch, max(1, h >> lvl), max(1, w >> lvl), ch), (3, 3, ch, ch)))
    return out


def conv_peak(x_shape: tuple, w_shape: tuple, min_seconds: float = 2.0) -> dict:
    """One fp32 "SAME" 2-D convolution (NHWC × HWIO), jitted, best of several. FLOPs are XLA's count
    (falling back to 2·k²·C_in·C_out·N·H·W where it gives none). Returns {"x", "w", "flops", "s", "gflops"}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal(w_shape) / math.sqrt(math.prod(w_shape[:3])), jnp.float32)
    conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    f = conv.lower(x, k).compile()
    flops = cost_of(f)["flops"] or 2.0 * math.prod(w_shape) * math.prod(x_shape[:3])
    jax.block_until_ready(f(x, k))
    s = best_seconds(lambda: f(x, k), min_seconds=min_seconds)
    return {"x": list(x_shape), "w": list(w_shape), "flops": flops, "s": s, "gflops": flops / s / 1e9}


def profile_stage(stage, repeats: int = 2) -> dict:
    """Compile `stage.fn` on `stage.args` (timed), read its cost analysis, run it once, then time it
    `repeats` times. Returns {"compile_s", "first_s", "s" (best steady state), "flops", "bytes"}."""
    import jax

    t0 = time.perf_counter()
    compiled = stage.fn.lower(*stage.args).compile()
    compile_s = time.perf_counter() - t0
    run = stage.python if stage.python is not None else (lambda: compiled(*stage.args))
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    first_s = time.perf_counter() - t0
    return {"compile_s": compile_s, "first_s": first_s, "s": best_seconds(run, repeats), **cost_of(compiled)}


def add_rates(row: dict, peaks: dict, ref: dict | None, key: str) -> dict:
    """Fill in gflops, % of the matmul and conv peaks, flop/byte, and the reference's seconds and ratio."""
    flops, s = row.get("flops"), row["s"]
    row["gflops"] = flops / s / 1e9 if flops else None
    for name in ("matmul", "conv"):
        p = peaks.get(name, {}).get("gflops")
        row[f"frac_{name}_peak"] = row["gflops"] / p if row["gflops"] and p else None
    row["flop_per_byte"] = flops / row["bytes"] if flops and row.get("bytes") else None
    ref_key, factor = REFERENCE_KEYS.get(key, (None, 1))
    ref_s = ref.get(ref_key) if ref and ref_key else None
    row["reference_s"] = factor * ref_s if ref_s else None
    row["ratio"] = row["reference_s"] / s if row["reference_s"] else None
    return row


HEADER = (f"{'stage':46s} {'GFLOP':>9s} {'FLOP/B':>7s} {'ours s':>9s} {'GFLOP/s':>8s} {'%mm pk':>7s} "
          f"{'%cv pk':>7s} {'ref s':>8s} {'ref/ours':>8s}")


def format_row(label: str, r: dict) -> str:
    """One table line of `add_rates`'s row (blank where a figure is missing)."""
    def f(v, spec, scale=1.0, suffix=""):
        width = int(spec.split(".")[0]) + len(suffix)
        return format(v * scale, spec) + suffix if v is not None else " " * width

    return (f"{label:46s} {f(r.get('flops'), '9.2f', 1e-9)} {f(r.get('flop_per_byte'), '7.1f')} "
            f"{r['s']:9.4f} {f(r.get('gflops'), '8.1f')} {f(r.get('frac_matmul_peak'), '6.1f', 100, '%')} "
            f"{f(r.get('frac_conv_peak'), '6.1f', 100, '%')} {f(r.get('reference_s'), '8.3f')} "
            f"{f(r.get('ratio'), '7.2f', 1.0, 'x')}")


def main(argv=None) -> dict:
    """Parse arguments, run the reference (unless --no-reference or tiny), measure the peaks and every
    stage, print the table as it goes; returns (and with --json writes) every figure."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="reduced")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per stage after the first (best kept)")
    ap.add_argument("--peak-n", type=int, default=2048, help="matmul size for the peak")
    ap.add_argument("--peak-seconds", type=float, default=2.0, help="least time spent timing each peak")
    ap.add_argument("--ref-steps", type=int, default=1,
                    help="DDIM steps of the reference's generate_batch (not reported here; keep it short)")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    keys = [k for k in args.stages.split(",") if k]
    unknown = sorted(set(keys) - set(STAGES))
    if unknown:
        ap.error(f"unknown stage(s) {unknown}")

    ref = None
    if not args.no_reference and args.width != "tiny":
        log(f"[roofline] reference ({args.width}) in .refenv, load {os.getloadavg()[0]:.2f} ...")
        try:
            ref = reference_stage_timings(args.width, sampling_steps=args.ref_steps, repeats=args.repeats,
                                          warmup=1)
            log(f"[roofline] reference done (load {ref.get('loadavg_start', float('nan')):.2f} → "
                f"{ref.get('loadavg_end', float('nan')):.2f}): "
                + ", ".join(f"{k} {ref[k]:.3f}" for k in dict.fromkeys(k for k, _ in REFERENCE_KEYS.values())
                            if ref.get(k)))
        except FileNotFoundError as e:
            log(f"[roofline] {e}: ours only")

    import jax

    out = {"width": args.width, "jax": jax.__version__, "devices": str(jax.devices()),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "loadavg_start": os.getloadavg()[0],
           "reference": ref, "peaks": {}, "stages": {}}
    peaks = out["peaks"]
    peaks["matmul"] = matmul_peak(args.peak_n, args.peak_seconds)
    log(f"[roofline] fp32 matmul peak {args.peak_n}³: {peaks['matmul']['gflops']:.1f} GFLOP/s "
        f"({peaks['matmul']['s'] * 1e3:.2f} ms; {jax.devices()[0].platform}, load {os.getloadavg()[0]:.2f})")
    with tempfile.TemporaryDirectory() as tmp:
        built = bench_stages.build_stages(args.width, tmp)
        convs = [conv_peak(x, w, args.peak_seconds / 2)
                 for x, w in unet_level_convs(built["weights"].unet, built["latent"])]
        for c in convs:
            log(f"[roofline] fp32 3×3 conv {tuple(c['x'])} * {tuple(c['w'])}: {c['gflops']:.1f} GFLOP/s "
                f"({c['flops'] / 1e9:.3f} GFLOP in {c['s'] * 1e3:.2f} ms)")
        peaks["conv_levels"] = convs
        peaks["conv"] = max(convs, key=lambda c: c["gflops"])
        log(f"[roofline] conv peak (best UNet level): {peaks['conv']['gflops']:.1f} GFLOP/s; at the widest "
            f"level {convs[-1]['gflops']:.1f}")
        log("\n" + HEADER)
        for key in keys:
            stage = built["stages"][key]
            row = add_rates(profile_stage(stage, args.repeats), peaks, ref, key)
            row["label"] = stage.label
            out["stages"][key] = row
            log(format_row(stage.label, row))
    out["loadavg_end"] = os.getloadavg()[0]
    log(f"(front-end FLOPs: its jitted log-mel only; %mm pk / %cv pk: of the matmul / conv peak above; "
        f"ref/ours > 1: ours faster; guidance pair's reference = 2 UNet calls)\n"
        f"our load average {out['loadavg_start']:.2f} → {out['loadavg_end']:.2f}; compile s: "
        + ", ".join(f"{k} {r['compile_s']:.1f}" for k, r in out["stages"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
