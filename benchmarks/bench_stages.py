"""Time each inference stage of audiosr-jax and of the PyTorch reference on the same machine, in one run.

    python benchmarks/bench_stages.py --width full --steps 50          # both, side by side, with ratios
    python benchmarks/bench_stages.py --width full --steps 50 --rounds 3   # alternating, medians
    python benchmarks/bench_stages.py --width reduced --no-reference   # ours only
    python benchmarks/bench_stages.py --width full --rounds 3 --dtypes float32,bfloat16   # also ours in bf16

The reference runs first, in its own venv (tools/reference/build_venv.sh; `--refenv`), as a subprocess
(tools/reference/time_reference.py), then ours in this process, so the two never compete for the cores.
Both use synthetic weights of the same architecture and the same 3 s clip (padded to 5.12 s: a 512×256 mel,
a 64×32 latent). Our single-stage figures are steady-state (after one compiling call, reported apart);
"sampling" is the whole `super_resolve_waveform` (low-pass prep, encode, S DDIM steps with guidance,
decode, vocoder, post-processing) against the reference's `generate_batch`. With `--rounds N` the two take
turns N times (ours on the same compiled programs) and the table gives medians and the range of the
per-round ratios: on a shared machine the reference's times drift by up to 2× between runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_reference(width: str, steps: int, refenv: str) -> dict | None:
    python = os.path.join(refenv, "bin", "python")
    if not os.path.exists(python):
        print(f"[bench] no reference venv at {refenv} (bash tools/reference/build_venv.sh): ours only", file=sys.stderr)
        return None
    cmd = [python, os.path.join(REPO, "tools", "reference", "time_reference.py"), "--width", width,
           "--sampling-steps", str(steps), "--repeats", "2", "--warmup", "1"]
    print(f"[bench] reference: {' '.join(cmd)}", file=sys.stderr, flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        raise SystemExit("[bench] the reference run failed")
    return json.loads(run.stdout.strip().splitlines()[-1])


def timed(fn, repeats=2, warm=True):
    """(first call seconds (compile + run), best steady-state seconds of `repeats` calls after it). With
    warm=False the program is known to be compiled and warm: no first call, first is None."""
    import jax

    first = None
    if warm:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return first, best


@dataclasses.dataclass
class StageProgram:
    """One inference stage of ours, ready to time: `fn(*args)` is a `jax.jit` function on fixed inputs.

    `python` (optional): a zero-argument callable that runs the whole stage when it is more than `fn` (the
    front-end: wav read and the numpy low-pass around the jitted log-mel); the stage is timed through it.
    """

    label: str
    fn: Any
    args: tuple
    python: Callable[[], Any] | None = None

    def run(self):
        """Run the stage once; returns its (jax) output."""
        return self.python() if self.python is not None else self.fn(*self.args)


def move_to_device(tree: dict) -> None:
    """Replace every leaf of the nested dict ``tree`` by a device array, in place and one leaf at a time (so
    the host copy of each is freed before the next moves and the peak memory does not grow). The weights
    then stay on the device, as in the batch runner: host numpy weights would be copied to the device at
    every call (0.12 s of a full-width UNet call on the 2-core CPU)."""
    import jax

    for key, value in tree.items():
        if isinstance(value, dict):
            move_to_device(value)
        else:
            tree[key] = jax.block_until_ready(jax.device_put(value))


def build_stages(width: str, workdir: str, dtype: str = "float32", weights=None) -> dict:
    """Build our stages at `width` ("tiny", "reduced" or "full", synthetic weights) on the 3 s parity clip
    written under `workdir` (which must outlive the returned programs), the networks computing in `dtype`
    with their kernels held in it (`pipeline.compute_params`, as the batch runner holds them). `weights`: an
    earlier call's "weights" (float32) to reuse instead of building them again.

    Returns {"stages": {key: StageProgram}, "weights": AudioSRWeights (float32 params on the device),
    "compute_weights": the same with the params the stages use, "wave": [C, N], "info": dict, "latent":
    (h, w, c), "build_s": seconds to build the weights}. Keys, in pipeline order: frontend, vae_encode, unet,
    unet_cfg_pair, vae_decode, vocoder, postprocess (the STFT low-band replacement and the output
    normalisation, on noise of the vocoder output's shape).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import soundfile as sf

    from audiosr_jax import audio
    from audiosr_jax.convert.core import convert_state_dict
    from audiosr_jax.inference import lowpass, postprocess
    from audiosr_jax.inference.pipeline import SamplingOptions, compute_params, latent_shape
    from audiosr_jax.lab.synthetic import parity_clip
    from audiosr_jax.lab.testing import synthetic_torch_checkpoint
    from audiosr_jax.models.unet import UNetModel
    from audiosr_jax.models.vae import AutoencoderKL
    from audiosr_jax.models.vocoder import HiFiGAN

    t0 = time.perf_counter()
    if weights is None:
        weights, _ = convert_state_dict(synthetic_torch_checkpoint(width), origin=f"synthetic-{width}")
        move_to_device(weights.params)
    build_s = time.perf_counter() - t0
    compute = dataclasses.replace(weights, params=compute_params(weights.params, SamplingOptions(dtype=dtype)))
    clip = os.path.join(workdir, "clip.wav")
    sf.write(clip, parity_clip(48000, 3.0), 48000, subtype="FLOAT")
    wave, info = audio.prepare_waveform(clip)
    lp = jnp.asarray(lowpass.prepare_lowpass(wave[0])[0])[None]
    mel_fn = jax.jit(lambda x: audio.log_mel_spectrogram(x)[0])

    def frontend():
        w, _ = audio.prepare_waveform(clip)
        return mel_fn(jnp.asarray(lowpass.prepare_lowpass(w[0])[0])[None])

    mel = frontend()
    dt = jnp.dtype(dtype)
    vae, unet, voc = AutoencoderKL(weights.vae, dt), UNetModel(weights.unet, dt), HiFiGAN(weights.vocoder, dt)
    pv, pu, pw = ({"params": compute.params[k]} for k in ("vae", "unet", "vocoder"))
    h, w, c = latent_shape(mel.shape[1], weights)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, h, w, weights.unet.in_channels)), jnp.float32)
    un = jax.jit(unet.apply)
    vo = jax.jit(voc.apply)
    # post-processing's cost does not depend on the values: noise of the vocoder output's shape (running the
    # vocoder here would compile it before its stage is timed)
    out_shape = jax.eval_shape(vo, pw, mel).shape
    waveform = jnp.asarray(0.1 * np.random.default_rng(1).standard_normal(out_shape), jnp.float32)
    x2 = jnp.concatenate([x, x])
    post = jax.jit(lambda out, low: postprocess.normalize_output(postprocess.replace_low_stft(out, low)))
    stages = {
        "frontend": StageProgram("front-end incl. low-pass", mel_fn, (lp,), frontend),
        "vae_encode": StageProgram(f"VAE encode ({mel.shape[1]}×{mel.shape[2]} mel)",
                                   jax.jit(lambda p, m: vae.apply(p, m, method=AutoencoderKL.encode)),
                                   (pv, mel[..., None])),
        "unet": StageProgram("one UNet call", un, (pu, x, jnp.full((1,), 501, jnp.int32))),
        "unet_cfg_pair": StageProgram("UNet, CFG pair (one batched call)", un,
                                      (pu, x2, jnp.full((2,), 501, jnp.int32))),
        "vae_decode": StageProgram(f"VAE decode ({h}×{w} latent)",
                                   jax.jit(lambda p, z: vae.apply(p, z, method=AutoencoderKL.decode)),
                                   (pv, jnp.zeros((1, h, w, c)))),
        "vocoder": StageProgram(f"vocoder ({mel.shape[1]} frames)", vo, (pw, mel)),
        "postprocess": StageProgram("post-processing (STFT low band + normalise)", post,
                                    (waveform, lp)),
    }
    return {"stages": stages, "weights": weights, "compute_weights": compute, "wave": wave, "info": info,
            "latent": (h, w, c), "build_s": build_s}


def stage_key(key: str, dtype: str) -> str:
    """Where `run_ours` puts the seconds of stage `key` timed in `dtype`: "unet_s" in float32,
    "unet_bfloat16_s" in bfloat16."""
    return f"{key}_s" if dtype == "float32" else f"{key}_{dtype}_s"


def run_ours(width: str, steps: int, rounds: int = 1, before_round: Callable[[int], None] | None = None,
             dtypes: tuple[str, ...] = ("float32",)) -> list[dict]:
    """Time our stages (steady state after one compiling call) and the whole `super_resolve_waveform` with
    `steps` DDIM steps, in each of `dtypes` (the same weights; kernels held in the compute dtype), `rounds`
    times on the same compiled programs, calling `before_round(r)` first (the reference's turn, so the two
    alternate). Returns one dict per round: {`stage_key(stage, dtype)`, "peak_rss_gb", "loadavg", ...;
    round 0 also "<stage>[_<dtype>]_first_s" (compile + first call)}."""
    t_import = time.perf_counter()
    import jax

    from audiosr_jax.inference.pipeline import (
        SamplingOptions,
        draw_noise,
        item_keys,
        num_sampler_steps,
        super_resolve_waveform,
    )

    common: dict = {"import_s": time.perf_counter() - t_import, "jax_devices": str(jax.devices()),
                    "dtypes": list(dtypes)}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        programs, weights = {}, None
        for dtype in dtypes:
            built = build_stages(width, tmp, dtype, weights)
            weights = built["weights"]
            common.setdefault("build_s", built["build_s"])
            compute, wave, info = built["compute_weights"], built["wave"], built["info"]
            options = SamplingOptions(steps=steps, guidance=3.5, eta=1.0, dtype=dtype)
            noise = draw_noise(item_keys(42, [0], [0]), built["latent"], num_sampler_steps(options))
            for key, stage in built["stages"].items():
                if key != "postprocess":
                    programs[stage_key(key, dtype)] = stage.run
            programs[stage_key("sampling", dtype)] = (
                lambda c=compute, w=wave, i=info, o=options, n=noise: super_resolve_waveform(c, w, i, o, noise=n)[0])
        for r in range(rounds):
            if before_round is not None:
                before_round(r)
            res = dict(common, round=r, sampling_steps=steps)
            for key, fn in programs.items():  # later rounds reuse round 0's compiled, warm programs
                first, res[key] = timed(fn, repeats=1 if key.startswith("sampling") else 2, warm=r == 0)
                if r == 0:
                    res[f"{key[:-2]}_first_s"] = first
            res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            res["loadavg"] = os.getloadavg()[0]
            out.append(res)
    return out


ROWS = [("front-end incl. low-pass", "frontend_s", "frontend_s"),
        ("VAE encode (512×256 mel)", "vae_encode_s", "vae_encode_s"),
        ("VAE decode (64×32 latent)", "vae_decode_s", "vae_decode_s"),
        ("one UNet call", "unet_s", "unet_s"),
        ("UNet, CFG pair (ours: one batched call; ref: 2 calls)", "unet_cfg_pair_s", None),
        ("vocoder (512 frames)", "vocoder_s", "vocoder_s"),
        ("sampling, whole pipeline", "sampling_s", "generate_batch_s"),
        ("peak RSS (GB)", "peak_rss_gb", "peak_rss_gb")]


def summarise(refs: list[dict], ours: list[dict], dtype: str = "float32") -> list[dict]:
    """Per row of ROWS: {"name", "reference", "ours" (medians over rounds of ours in `dtype`; None where
    absent), "ratio" (reference / ours of the medians), "ratio_min", "ratio_max" (over rounds, each round's
    reference against the same round's ours)}. The reference's guidance pair is 2 × its single UNet call;
    peak RSS is the process's, in the float32 table only."""
    import statistics

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    out = []
    for name, k_ours, k_ref in ROWS:
        if k_ref is None:  # the guidance pair: the reference makes two UNet calls
            rv = [2 * r["unet_s"] if r.get("unet_s") else None for r in refs]
        else:
            rv = [r.get(k_ref) for r in refs]
        if dtype != "float32":
            k_ours = stage_key(k_ours[:-2], dtype) if k_ours.endswith("_s") else None
        ov = [o.get(k_ours) for o in ours] if k_ours else []
        per_round = [a / b for a, b in zip(rv, ov) if a and b]
        r_med, o_med = med(rv), med(ov)
        out.append({"name": name, "reference": r_med, "ours": o_med,
                    "ratio": r_med / o_med if r_med and o_med else None,
                    "ratio_min": min(per_round) if per_round else None,
                    "ratio_max": max(per_round) if per_round else None})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="reduced")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1,
                    help="reference then ours, this many times (medians; per-round ratios show the drift)")
    ap.add_argument("--refenv", default=os.path.join(REPO, ".refenv"))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--dtypes", default="float32",
                    help="comma-separated compute dtypes of ours (float32, bfloat16), each timed against the "
                         "reference's float32 in the same rounds")
    ap.add_argument("--json", help="write every round of both sides and the summary here")
    args = ap.parse_args(argv)
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    if not dtypes or set(dtypes) - {"float32", "bfloat16"}:
        ap.error(f"--dtypes takes float32 and/or bfloat16, got {args.dtypes!r}")
    use_ref = not args.no_reference and args.width != "tiny"
    refs: list[dict] = []

    def reference_turn(r: int) -> None:
        if use_ref and (ref := run_reference(args.width, args.steps, args.refenv)) is not None:
            refs.append(ref)

    ours = run_ours(args.width, args.steps, args.rounds, reference_turn, dtypes)
    summary = {dtype: summarise(refs, ours, dtype) for dtype in dtypes}
    for dtype, rows in summary.items():
        print(f"\nours in {dtype} (the reference in float32); width={args.width}, sampling steps={args.steps}, "
              f"guidance 3.5, 5.12 s clip; {ours[0]['jax_devices']}; {len(ours)} round(s), medians")
        print(f"{'stage':58s} {'reference':>10s} {'audiosr-jax':>12s} {'ratio':>7s} {'per round':>13s}")
        for row in rows:
            if row["ours"] is None:
                continue
            ref_s = f"{row['reference']:10.3f}" if row["reference"] is not None else f"{'–':>10s}"
            ratio = f"{row['ratio']:6.2f}x" if row["ratio"] else ""
            spread = (f"{row['ratio_min']:.2f}–{row['ratio_max']:.2f}x" if row["ratio_min"] is not None
                      and len(ours) > 1 else "")
            print(f"{row['name']:58s} {ref_s} {row['ours']:12.3f} {ratio:>7s} {spread:>13s}")
    print("(ratio = reference / ours; > 1 means audiosr-jax is faster or smaller)")
    print("our compile+first-call seconds: "
          + ", ".join(f"{k[:-8]} {v:.1f}" for k, v in ours[0].items() if k.endswith("_first_s")))
    print("load average per round (ours): " + ", ".join(f"{o['loadavg']:.2f}" for o in ours))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": refs, "ours": ours, "summary": summary, "width": args.width, "steps": args.steps},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
