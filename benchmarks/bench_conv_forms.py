"""The convolutions the networks are made of, in isolation: XLA's convolution against the same conv written
as matmuls, on this machine (run it under different XLA_FLAGS to compare backends).

    python benchmarks/bench_conv_forms.py --width full
    python benchmarks/bench_conv_forms.py --width full --forms conv,shifted --dtype bfloat16
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/bench_conv_forms.py --width full --forms conv

Shapes (from the model configs at `--width`, for the 5.12 s clip):
  vae L<l>    one 3×3 conv of VAE level l: ch·ch_mult[l] channels on the [frames, num_mels] mel halved l times
  unet L<l>   one 3×3 conv of UNet level l, batch 2 (the guidance pair) on the latent halved l times
  voc L<l>    one k=resblock_kernel_sizes[0] conv of the vocoder's level l at that level's output length
Forms (same input, same kernel; max |difference| from `conv` is printed):
  conv        jax.lax.conv_general_dilated (what flax nn.Conv runs)
  im2col      the k² shifted copies concatenated on channels, then one [N·H·W, k²·C] @ [k²·C, C] dot
  shifted     the sum of k² [N·H·W, C] @ [C, C] dots over shifted slices of the padded input
Each line: seconds (best of `--repeats` after a compiling call), GFLOP/s from XLA's count of `conv`.
Inputs and kernels are in `--dtype`; every form accumulates in float32 (`preferred_element_type`), as the
networks' layers do. First, the [n, n] @ [n, n] matmul in that dtype (f32 accumulation), and in bf16 also with
a bf16 result: XLA CPU runs the former on the bf16 matrix units (AMX) and converts the latter to float32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_roofline import best_seconds, cost_of  # noqa: E402
from bench_upsample_conv import level_lengths  # noqa: E402

from audiosr_jax.models.unet import UNetConfig  # noqa: E402
from audiosr_jax.models.vae import VAEConfig  # noqa: E402
from audiosr_jax.models.vocoder import VocoderConfig  # noqa: E402


def conv(x, w):
    """'same' conv, x [N, *S, C] (S = 1 or 2 spatial dims), w [*K, C, C_out] → [N, *S, C_out]."""
    nd = x.ndim - 2
    dn = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
    pads = [((k - 1) // 2, k // 2) for k in w.shape[:nd]]
    return jax.lax.conv_general_dilated(x, w, (1,) * nd, pads, dimension_numbers=dn,
                                        preferred_element_type=jnp.float32)


def _shifts(x, w):
    """The padded input's k-tap shifted views, each [N, *S, C], in kernel order."""
    nd = x.ndim - 2
    ks = w.shape[:nd]
    xp = jnp.pad(x, [(0, 0)] + [((k - 1) // 2, k // 2) for k in ks] + [(0, 0)])
    sizes = x.shape[1:-1]
    out = []
    for idx in np.ndindex(*ks):
        sl = tuple(slice(i, i + s) for i, s in zip(idx, sizes))
        out.append(xp[(slice(None), *sl)])
    return out


def im2col(x, w):
    """`conv` as one dot over the concatenated shifted copies."""
    cols = jnp.concatenate(_shifts(x, w), axis=-1)
    return jnp.dot(cols, w.reshape(-1, w.shape[-1]), preferred_element_type=jnp.float32)


def shifted(x, w):
    """`conv` as a sum of one dot per kernel tap."""
    taps = w.reshape(-1, w.shape[-2], w.shape[-1])
    out = None
    for s, t in zip(_shifts(x, w), taps):
        y = jnp.dot(s, t, preferred_element_type=jnp.float32)
        out = y if out is None else out + y
    return out


FORMS = {"conv": conv, "im2col": im2col, "shifted": shifted}


def shapes(width: str, frames: int) -> list[tuple[str, tuple, tuple]]:
    """[(name, input shape, kernel shape)] for the VAE, UNet and vocoder levels at `width` for a mel of
    `frames` frames (× the vocoder's num_mels bins)."""
    make = {"tiny": "tiny", "reduced": "reduced", "full": None}[width]
    vae = getattr(VAEConfig, make)() if make else VAEConfig()
    unet = getattr(UNetConfig, make)() if make else UNetConfig()
    voc = getattr(VocoderConfig, make)() if make else VocoderConfig()
    mel = (frames, voc.num_mels)
    out = []
    for lvl, m in enumerate(vae.ch_mult):
        c = vae.ch * m
        out.append((f"vae L{lvl}", (1, mel[0] >> lvl, mel[1] >> lvl, c), (3, 3, c, c)))
    lat = (mel[0] // 2 ** (len(vae.ch_mult) - 1), mel[1] // 2 ** (len(vae.ch_mult) - 1))
    for lvl, m in enumerate(unet.channel_mult):
        c = unet.model_channels * m
        out.append((f"unet L{lvl}", (2, lat[0] >> lvl, lat[1] >> lvl, c), (3, 3, c, c)))
    k = voc.resblock_kernel_sizes[0]
    lengths = level_lengths(voc, frames)[1:] + [voc.output_length(frames)]
    for lvl, n in enumerate(lengths):
        c = voc.channels(lvl)
        out.append((f"voc L{lvl}", (1, n, c), (k, c, c)))
    return out


def main(argv=None) -> dict:
    """Time every shape in every form, print a line each as it goes; returns (and with --json writes) them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="full")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--only", default="", help="comma-separated name prefixes (e.g. 'vae,voc L0')")
    ap.add_argument("--frames", type=int, default=512, help="mel frames (512 = the 5.12 s clip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--matmul", type=int, default=2048, help="n of the matmul peak (0: skip it)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    forms = [f for f in args.forms.split(",") if f]
    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    res = {"width": args.width, "dtype": args.dtype, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "loadavg_start": os.getloadavg()[0], "rows": [], "matmul": {}}
    if args.matmul:
        n = args.matmul
        a = jnp.asarray(rng.standard_normal((n, n)), dtype)
        results = {"f32 accumulation": jnp.float32} | ({"bf16 result": dtype} if dtype != jnp.float32 else {})
        for label, out in results.items():
            mm = jax.jit(lambda p, q, out=out: jnp.dot(p, q, preferred_element_type=out)).lower(a, a).compile()
            s = best_seconds(lambda: mm(a, a), args.repeats)
            res["matmul"][label] = 2 * n ** 3 / s / 1e9
            print(f"matmul [{n}, {n}] @ [{n}, {n}] {args.dtype}, {label}: {s:.4f} s, "
                  f"{res['matmul'][label]:.0f} GFLOP/s", flush=True)
    print(f"{'shape':44s} {'form':8s} {'s':>9s} {'GFLOP/s':>8s} {'vs conv':>7s} {'max|diff|':>9s}", flush=True)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    for name, xs, ws in shapes(args.width, args.frames):
        if only and not any(name.startswith(p) for p in only):
            continue
        x = jnp.asarray(rng.standard_normal(xs), dtype)
        w = jnp.asarray(rng.standard_normal(ws) / np.sqrt(np.prod(ws[:-1])), dtype)
        ref, base, flops = None, None, None
        for form in forms:
            compiled = jax.jit(FORMS[form]).lower(x, w).compile()
            y = jax.block_until_ready(compiled(x, w))
            s = best_seconds(lambda: compiled(x, w), args.repeats)
            if ref is None:
                ref, base, flops = y, s, cost_of(compiled)["flops"]
            diff = float(jnp.max(jnp.abs(y - ref)))
            label = f"{name} {xs}*{ws[:-2]}"
            print(f"{label:44s} {form:8s} {s:9.4f} {flops / s / 1e9 if flops else float('nan'):8.1f} "
                  f"{base / s:6.2f}x {diff:9.1e}", flush=True)
            res["rows"].append({"name": name, "x": list(xs), "w": list(ws), "form": form, "s": s, "flops": flops,
                                "max_abs_diff": diff})
    res["loadavg_end"] = os.getloadavg()[0]
    print(f"load average {res['loadavg_start']:.2f} → {res['loadavg_end']:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
