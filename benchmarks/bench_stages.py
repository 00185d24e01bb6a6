"""Time each inference stage of audiosr-jax and of the PyTorch reference on the same machine, in one run.

    python benchmarks/bench_stages.py --width full --steps 50          # both, side by side, with ratios
    python benchmarks/bench_stages.py --width reduced --no-reference   # ours only

The reference runs first, in its own venv (tools/reference/build_venv.sh; `--refenv`), as a subprocess
(tools/reference/time_reference.py), then ours in this process, so the two never compete for the cores.
Both use synthetic weights of the same architecture and the same 3 s clip (padded to 5.12 s: a 512×256 mel,
a 64×32 latent). Our single-stage figures are steady-state (after one compiling call, reported apart);
"sampling" is the whole `super_resolve_waveform` (low-pass prep, encode, S DDIM steps with guidance,
decode, vocoder, post-processing) against the reference's `generate_batch`.
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


def timed(fn, repeats=2):
    """(first call seconds (compile + run), best steady-state seconds)."""
    import jax

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


def build_stages(width: str, workdir: str) -> dict:
    """Build our stages at `width` ("tiny", "reduced" or "full", synthetic weights) on the 3 s parity clip
    written under `workdir` (which must outlive the returned programs).

    Returns {"stages": {key: StageProgram}, "weights": AudioSRWeights (params on the device), "wave": [C, N],
    "info": dict, "latent": (h, w, c), "build_s": seconds to build the weights}. Keys, in pipeline order: frontend,
    vae_encode, unet, unet_cfg_pair, vae_decode, vocoder, postprocess (the STFT low-band replacement and the
    output normalisation, on noise of the vocoder output's shape).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import soundfile as sf

    from audiosr_jax import audio
    from audiosr_jax.convert.core import convert_state_dict
    from audiosr_jax.inference import lowpass, postprocess
    from audiosr_jax.inference.pipeline import latent_shape
    from audiosr_jax.lab.synthetic import parity_clip
    from audiosr_jax.lab.testing import synthetic_torch_checkpoint
    from audiosr_jax.models.unet import UNetModel
    from audiosr_jax.models.vae import AutoencoderKL
    from audiosr_jax.models.vocoder import HiFiGAN

    t0 = time.perf_counter()
    weights, _ = convert_state_dict(synthetic_torch_checkpoint(width), origin=f"synthetic-{width}")
    move_to_device(weights.params)
    build_s = time.perf_counter() - t0
    clip = os.path.join(workdir, "clip.wav")
    sf.write(clip, parity_clip(48000, 3.0), 48000, subtype="FLOAT")
    wave, info = audio.prepare_waveform(clip)
    lp = jnp.asarray(lowpass.prepare_lowpass(wave[0])[0])[None]
    mel_fn = jax.jit(lambda x: audio.log_mel_spectrogram(x)[0])

    def frontend():
        w, _ = audio.prepare_waveform(clip)
        return mel_fn(jnp.asarray(lowpass.prepare_lowpass(w[0])[0])[None])

    mel = frontend()
    vae, unet, voc = AutoencoderKL(weights.vae), UNetModel(weights.unet), HiFiGAN(weights.vocoder)
    pv, pu, pw = ({"params": weights.params[k]} for k in ("vae", "unet", "vocoder"))
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
    return {"stages": stages, "weights": weights, "wave": wave, "info": info, "latent": (h, w, c),
            "build_s": build_s}


def run_ours(width: str, steps: int) -> dict:
    """Time our stages (steady state after one compiling call) and the whole `super_resolve_waveform` with
    `steps` DDIM steps. Returns {"<stage>_s", "<stage>_first_s", "sampling_s", "peak_rss_gb", ...}."""
    t_import = time.perf_counter()
    import jax

    from audiosr_jax.inference.pipeline import (
        SamplingOptions,
        draw_noise,
        item_keys,
        num_sampler_steps,
        super_resolve_waveform,
    )

    res: dict = {"import_s": time.perf_counter() - t_import, "jax_devices": str(jax.devices())}
    with tempfile.TemporaryDirectory() as tmp:
        built = build_stages(width, tmp)
        res["build_s"] = built["build_s"]
        for key, stage in built["stages"].items():
            if key != "postprocess":
                res[f"{key}_first_s"], res[f"{key}_s"] = timed(stage.run)
    weights, wave, info = built["weights"], built["wave"], built["info"]
    options = SamplingOptions(steps=steps, guidance=3.5, eta=1.0)
    noise = draw_noise(item_keys(42, [0], [0]), built["latent"], num_sampler_steps(options))
    res["sampling_first_s"], res["sampling_s"] = timed(
        lambda: super_resolve_waveform(weights, wave, info, options, noise=noise)[0], repeats=1)
    res["sampling_steps"] = steps
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return res


ROWS = [("front-end incl. low-pass", "frontend_s", "frontend_s"),
        ("VAE encode (512×256 mel)", "vae_encode_s", "vae_encode_s"),
        ("VAE decode (64×32 latent)", "vae_decode_s", "vae_decode_s"),
        ("one UNet call", "unet_s", "unet_s"),
        ("UNet, CFG pair (ours: one batched call; ref: 2 calls)", "unet_cfg_pair_s", None),
        ("vocoder (512 frames)", "vocoder_s", "vocoder_s"),
        ("sampling, whole pipeline", "sampling_s", "generate_batch_s"),
        ("peak RSS (GB)", "peak_rss_gb", "peak_rss_gb")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="reduced")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--refenv", default=os.path.join(REPO, ".refenv"))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--json", help="write both result dicts here")
    args = ap.parse_args()
    ref = None if args.no_reference or args.width == "tiny" else run_reference(args.width, args.steps, args.refenv)
    ours = run_ours(args.width, args.steps)
    if ref is not None and ref.get("unet_s"):
        ref["unet_cfg_pair_s"] = 2 * ref["unet_s"]
    print(f"\nwidth={args.width}, sampling steps={args.steps}, guidance 3.5, 5.12 s clip; {ours['jax_devices']}")
    print(f"{'stage':58s} {'reference':>10s} {'audiosr-jax':>12s} {'ratio':>7s}")
    for name, k_ours, k_ref in ROWS:
        r = ref.get(k_ref or k_ours) if ref else None
        o = ours.get(k_ours)
        ratio = f"{r / o:6.2f}x" if r and o else ""
        print(f"{name:58s} {r if r is not None else float('nan'):10.3f} {o:12.3f} {ratio:>7s}")
    print("(ratio = reference / ours; > 1 means audiosr-jax is faster or smaller)")
    print("our compile+first-call seconds: " + ", ".join(f"{k[:-8]} {v:.1f}" for k, v in ours.items() if k.endswith("_first_s")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": ref, "ours": ours, "width": args.width, "steps": args.steps}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
