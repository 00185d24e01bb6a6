"""Few-step super-resolution speed: seconds per 5.12 s window at 1–4 network evaluations (flow-objective
weights, Euler / Heun on the flow ODE; distilled students on their progressive DDIM grid, guidance baked in)
and at DDIM 10, beside the reference's DDIM 50, in one run; and the share of each window's time left in the
VAE and the vocoder once the UNet runs only a few times.

    python benchmarks/bench_few_step.py --width full                  # the reference first, then ours
    python benchmarks/bench_few_step.py --width tiny --no-reference   # a quick check

Both sides use synthetic weights of the same architecture on the same 3 s clip padded to 5.12 s (see
bench_stages.py, whose stage programs this reuses); guidance 3.5 (students: 1), one window per batch. Speed
does not depend on what the weights learnt: a flow-objective model is the released UNet with
`DiffusionConfig(objective="flow")`, so these are the speeds of any trained few-step model of this
architecture. Whether a setting is of equal quality is a separate question, answered by the objectives
ablation (reports/ablations/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_stages  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (label, objective, sampler, steps, guidance). A distilled student has the guidance baked in: it samples at
# guidance 1, one single-batch UNet call per step instead of a guided pair.
SETTINGS = [("flow Euler 1", "flow", "euler", 1, 3.5), ("flow Euler 2", "flow", "euler", 2, 3.5),
            ("flow Heun 2 (3 calls)", "flow", "heun", 2, 3.5), ("flow Euler 4", "flow", "euler", 4, 3.5),
            ("distilled student, 1 step", "diffusion", "ddim_progressive", 1, 1.0),
            ("distilled student, 2 steps", "diffusion", "ddim_progressive", 2, 1.0),
            ("distilled student, 4 steps", "diffusion", "ddim_progressive", 4, 1.0),
            ("DDIM 10 (AudioSR's objective)", "diffusion", "ddim", 10, 3.5)]


def run_ours(width: str, settings, repeats: int) -> dict:
    """Stage seconds (steady state) and, per setting, the whole window's seconds and network calls."""
    from audiosr_jax.diffusion import flow_samplers, sampling
    from audiosr_jax.diffusion.config import DiffusionConfig
    from audiosr_jax.inference.pipeline import (
        SamplingOptions,
        draw_noise,
        item_keys,
        num_sampler_steps,
        super_resolve_waveform,
    )

    out: dict = {"stages": {}, "settings": []}
    with tempfile.TemporaryDirectory() as tmp:
        built = bench_stages.build_stages(width, tmp)
        for key in ("frontend", "vae_encode", "unet_cfg_pair", "vae_decode", "vocoder", "postprocess"):
            out["stages"][key] = bench_stages.timed(built["stages"][key].run, repeats)[1]
            print(f"[ours] {key:14s} {out['stages'][key]:8.3f} s", file=sys.stderr, flush=True)
        base, wave, info = built["weights"], built["wave"], built["info"]
        for label, objective, sampler, steps, guidance in settings:
            weights = dataclasses.replace(base, diffusion=DiffusionConfig(objective=objective))
            options = SamplingOptions(steps=steps, guidance=guidance, eta=0.0, sampler=sampler)
            noise = draw_noise(item_keys(42, [0], [0]), built["latent"], num_sampler_steps(options, weights))
            first, best = bench_stages.timed(lambda: super_resolve_waveform(weights, wave, info, options, noise=noise)[0],
                                   repeats)
            calls = sampling.num_network_calls(sampler, steps) if objective == "diffusion" else \
                flow_samplers.num_calls(sampler, steps)
            out["settings"].append({"setting": label, "calls": calls, "window_s": best, "compile_and_run_s": first})
            print(f"[ours] {label:30s} {calls:3d} calls {best:8.3f} s/window (first {first:.1f} s)",
                  file=sys.stderr, flush=True)
    return out


def table(ours: dict, ref: dict | None) -> str:
    """The printed table: per setting, network calls, s/window, throughput × the reference's DDIM 50, and the
    share of the window in the VAE (encode + decode) and the vocoder (from the steady stage times)."""
    st = ours["stages"]
    vae_voc = st["vae_encode"] + st["vae_decode"] + st["vocoder"]
    ref_s = ref.get("generate_batch_s") if ref else None
    lines = [f"{'setting':32s} {'calls':>5s} {'s/window':>9s} {'x ref DDIM-50':>14s} {'VAE+vocoder share':>18s}"]
    if ref_s:
        lines.append(f"{'reference DDIM 50 (PyTorch)':32s} {ref.get('generate_batch_steps', 50):5d} {ref_s:9.2f} "
                     f"{1.0:14.2f} {'':>18s}")
    for s in ours["settings"]:
        speed = f"{ref_s / s['window_s']:14.2f}" if ref_s else f"{'–':>14s}"
        lines.append(f"{s['setting']:32s} {s['calls']:5d} {s['window_s']:9.2f} {speed} "
                     f"{min(1.0, vae_voc / s['window_s']):18.0%}")
    lines.append(f"stages (s): front-end {st['frontend']:.3f}, VAE encode {st['vae_encode']:.3f}, UNet CFG pair "
                 f"{st['unet_cfg_pair']:.3f}, VAE decode {st['vae_decode']:.3f}, vocoder {st['vocoder']:.3f}, "
                 f"post-processing {st['postprocess']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="full")
    ap.add_argument("--refenv", default=os.path.join(REPO, ".refenv"))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls after the compiling one (best is kept)")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    ref = None if args.no_reference or args.width == "tiny" else bench_stages.run_reference(args.width, 50,
                                                                                            args.refenv)
    ours = run_ours(args.width, SETTINGS, args.repeats)
    print(f"\nwidth={args.width}, guidance 3.5 (students 1), one 5.12 s window per batch, load average {os.getloadavg()[0]:.1f}")
    print(table(ours, ref), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"width": args.width, "ours": ours, "reference": ref}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
