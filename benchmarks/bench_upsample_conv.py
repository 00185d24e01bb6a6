"""The vocoder's transposed convolutions (and one resblock conv per level) in isolation: three ways to
write the same layer, timed on this machine, with their largest difference from the current one.

    python benchmarks/bench_upsample_conv.py --width full            # every level of the released vocoder
    python benchmarks/bench_upsample_conv.py --width tiny --repeats 1

Per upsampling level i of HiFiGAN (VocoderConfig at `--width`; the input length is that level's length for
`--frames` mel frames), on random fp32 input and a random kernel in the Flax layout [K, C_in, C_out]:

  current   `models.vocoder.upsample_conv` (flax ConvTranspose: one conv with lhs_dilation = rate)
  zeros     the input with rate-1 zeros put between samples explicitly, then a stride-1 conv
  phase     the sub-pixel / polyphase form: one stride-1 conv with ceil(K/u) taps and rate·C_out outputs
            (one output channel block per phase), reshaped to rate× the length and cropped

and, for the level's first resblock conv (k = resblock_kernel_sizes[0], dilation 1 and the largest one):

  conv1d    `flax.linen.Conv` on [B, L, C] (what ResBlock1 uses)
  conv2d    the same as a 2-D conv on [B, 1, L, C]

Each line: seconds (best of `--repeats` after a compiling call), GFLOP/s from XLA's count of the current
form (useful FLOPs, the same for all forms), and max |difference| from the current form.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_roofline import best_seconds, cost_of  # noqa: E402

from audiosr_jax.models.vocoder import VocoderConfig, upsample_conv, upsample_padding  # noqa: E402


def zeros_between(x, kernel, bias, rate: int):
    """Transposed conv as zero insertion + stride-1 conv. x [B, L, C_in], kernel [K, C_in, C_out] (Flax
    layout, i.e. torch's flipped), bias [C_out] → [B, (L-1)·rate - 2·((K-rate)//2) + K, C_out]."""
    b, n, c = x.shape
    k = kernel.shape[0]
    xd = jnp.pad(x[:, :, None, :], ((0, 0), (0, 0), (0, rate - 1), (0, 0))).reshape(b, n * rate, c)
    xd = xd[:, :(n - 1) * rate + 1]
    pad = upsample_padding(k, rate)
    y = jax.lax.conv_general_dilated(xd, kernel, (1,), (pad,), dimension_numbers=("NWC", "WIO", "NWC"))
    return y + bias


def phase_kernel(kernel, rate: int):
    """Flax-layout transposed-conv kernel [K, C_in, C_out] → the polyphase kernel [J, C_in, rate·C_out],
    J = ceil(K / rate): tap j', phase r holds torch's tap (J-1-j')·rate + r, i.e. Flax's K-1-(J-1-j')·rate-r
    (zero where that falls outside the kernel)."""
    k, cin, cout = kernel.shape
    taps = -(-k // rate)
    idx = np.array([[k - 1 - (taps - 1 - j) * rate - r for r in range(rate)] for j in range(taps)])
    valid = jnp.asarray(idx >= 0)[..., None, None]
    g = jnp.where(valid, kernel[np.clip(idx, 0, k - 1)], 0.0)  # [J, rate, C_in, C_out]
    return jnp.transpose(g, (0, 2, 1, 3)).reshape(taps, cin, rate * cout)


def phase(x, kernel, bias, rate: int):
    """Transposed conv as one stride-1 conv over rate phases (sub-pixel form); same in/out as
    `zeros_between`."""
    b, n, _ = x.shape
    k, _, cout = kernel.shape
    taps = -(-k // rate)
    p = (k - rate) // 2
    y = jax.lax.conv_general_dilated(x, phase_kernel(kernel, rate), (1,), ((taps - 1, taps - 1),),
                                     dimension_numbers=("NWC", "WIO", "NWC"))
    y = y.reshape(b, (n + taps - 1) * rate, cout)
    out = (n - 1) * rate - 2 * p + k
    return y[:, p:p + out] + bias


def conv1d(x, kernel, bias, dilation: int):
    """ResBlock1's conv: 'same' padding (k·d - d)//2, [B, L, C] → [B, L, C_out]."""
    pad = (kernel.shape[0] * dilation - dilation) // 2
    y = jax.lax.conv_general_dilated(x, kernel, (1,), ((pad, pad),), rhs_dilation=(dilation,),
                                     dimension_numbers=("NWC", "WIO", "NWC"))
    return y + bias


def conv1d_as_2d(x, kernel, bias, dilation: int):
    """`conv1d` as a 2-D conv on [B, 1, L, C] with a [1, k] kernel."""
    pad = (kernel.shape[0] * dilation - dilation) // 2
    y = jax.lax.conv_general_dilated(x[:, None], kernel[None], (1, 1), ((0, 0), (pad, pad)),
                                     rhs_dilation=(1, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, 0] + bias


def level_lengths(cfg: VocoderConfig, frames: int) -> list[int]:
    """Input length of each upsampling level for `frames` mel frames."""
    n, out = frames, []
    for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        out.append(n)
        n = (n - 1) * u - 2 * ((k - u) // 2) + k
    return out


def time_forms(forms: dict, args: tuple, repeats: int) -> dict:
    """{name: jittable f}, args → {name: {"s", "max_abs_diff" (from the first form), "flops" (XLA's)}}."""
    out, ref = {}, None
    for name, f in forms.items():
        compiled = jax.jit(f).lower(*args).compile()
        y = jax.block_until_ready(compiled(*args))
        ref = y if ref is None else ref
        out[name] = {"s": best_seconds(lambda: compiled(*args), repeats), "flops": cost_of(compiled)["flops"],
                     "max_abs_diff": float(jnp.max(jnp.abs(y - ref))), "ref_max_abs": float(jnp.max(jnp.abs(ref)))}
    return out


def main(argv=None) -> dict:
    """Time every level's forms, print a line per form as it goes; returns (and with --json writes) them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="full")
    ap.add_argument("--frames", type=int, default=512, help="mel frames (512 = the 5.12 s clip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--levels", default="", help="comma-separated level indices (default: all)")
    ap.add_argument("--no-resblock", action="store_true", help="skip the resblock conv comparison")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    cfg = {"tiny": VocoderConfig.tiny(), "reduced": VocoderConfig.reduced(), "full": VocoderConfig()}[args.width]
    rng = np.random.default_rng(0)
    levels = [int(i) for i in args.levels.split(",")] if args.levels else range(len(cfg.upsample_rates))
    lengths = level_lengths(cfg, args.frames)
    res = {"width": args.width, "frames": args.frames, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "loadavg_start": os.getloadavg()[0], "levels": []}
    print(f"{'level':26s} {'form':9s} {'s':>9s} {'GFLOP/s':>8s} {'speed-up':>8s} {'max|diff|':>10s}", flush=True)
    for i in levels:
        u, k, n = cfg.upsample_rates[i], cfg.upsample_kernel_sizes[i], lengths[i]
        cin, cout = cfg.channels(i - 1), cfg.channels(i)
        x = jnp.asarray(rng.standard_normal((1, n, cin)), jnp.float32)
        layer = upsample_conv(cout, k, u)
        params = layer.init(jax.random.PRNGKey(i), x[:, :4])
        kern, bias = params["params"]["kernel"], params["params"]["bias"]
        forms = {"current": lambda x, w, b: layer.apply({"params": {"kernel": w, "bias": b}}, x),
                 "zeros": lambda x, w, b: zeros_between(x, w, b, u),
                 "phase": lambda x, w, b: phase(x, w, b, u)}
        rows = {"ups": time_forms(forms, (x, kern, bias), args.repeats)}
        if not args.no_resblock:
            rk, rd = cfg.resblock_kernel_sizes[0], cfg.resblock_dilation_sizes[0]
            nout = (n - 1) * u - 2 * ((k - u) // 2) + k
            xr = jnp.asarray(rng.standard_normal((1, nout, cout)), jnp.float32)
            wr = jnp.asarray(rng.standard_normal((rk, cout, cout)) / math.sqrt(rk * cout), jnp.float32)
            br = jnp.zeros((cout,), jnp.float32)
            for d in sorted({1, max(rd)}):
                rows[f"res k{rk} d{d}"] = time_forms(
                    {"conv1d": lambda x, w, b, d=d: conv1d(x, w, b, d),
                     "conv2d": lambda x, w, b, d=d: conv1d_as_2d(x, w, b, d)}, (xr, wr, br), args.repeats)
        for what, forms_res in rows.items():
            base = next(iter(forms_res.values()))
            name = f"{i} {what}" + (f" {cin}→{cout} k{k} u{u} L{n}" if what == "ups" else f" C{cout}")
            for form, r in forms_res.items():
                flops = base["flops"]
                print(f"{name:26s} {form:9s} {r['s']:9.4f} {flops / r['s'] / 1e9 if flops else float('nan'):8.1f} "
                      f"{base['s'] / r['s']:7.2f}x {r['max_abs_diff']:10.2e}", flush=True)
        res["levels"].append({"level": i, "rate": u, "kernel": k, "length": n, "c_in": cin, "c_out": cout,
                              **{what: r for what, r in rows.items()}})
    res["loadavg_end"] = os.getloadavg()[0]
    print(f"load average {res['loadavg_start']:.2f} → {res['loadavg_end']:.2f}; max|diff| is from the first form "
          f"of each group (the current one)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
