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
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

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


def _timed(fn, repeats=2):
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


def run_ours(width: str, steps: int) -> dict:
    t_import = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import soundfile as sf

    from audiosr_jax import audio
    from audiosr_jax.inference import lowpass
    from audiosr_jax.convert.core import convert_state_dict
    from audiosr_jax.models.unet import UNetModel
    from audiosr_jax.models.vae import AutoencoderKL
    from audiosr_jax.models.vocoder import HiFiGAN
    from audiosr_jax.inference.pipeline import SamplingOptions, draw_noise, item_keys, latent_shape, num_sampler_steps, super_resolve_waveform
    from audiosr_jax.lab.synthetic import parity_clip
    from audiosr_jax.lab.testing import synthetic_torch_checkpoint

    res: dict = {"import_s": time.perf_counter() - t_import, "jax_devices": str(jax.devices())}
    t0 = time.perf_counter()
    weights, _ = convert_state_dict(synthetic_torch_checkpoint(width), origin=f"synthetic-{width}")
    res["build_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, "clip.wav")
        sf.write(clip, parity_clip(48000, 3.0), 48000, subtype="FLOAT")

        def frontend():
            wave, _ = audio.prepare_waveform(clip)
            lp, _ = lowpass.prepare_lowpass(wave[0])
            return audio.log_mel_spectrogram(jnp.asarray(lp)[None])[0]

        res["frontend_first_s"], res["frontend_s"] = _timed(frontend)
        wave, info = audio.prepare_waveform(clip)
        mel = frontend()
    vae, unet, voc = AutoencoderKL(weights.vae), UNetModel(weights.unet), HiFiGAN(weights.vocoder)
    pv, pu, pw = ({"params": weights.params[k]} for k in ("vae", "unet", "vocoder"))
    enc = jax.jit(lambda p, m: vae.apply(p, m, method=AutoencoderKL.encode))
    dec = jax.jit(lambda p, z: vae.apply(p, z, method=AutoencoderKL.decode))
    h, w, c = latent_shape(mel.shape[1], weights)
    z = jnp.zeros((1, h, w, c))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, h, w, weights.unet.in_channels)), jnp.float32)
    un = jax.jit(unet.apply)
    vo = jax.jit(voc.apply)
    res["vae_encode_first_s"], res["vae_encode_s"] = _timed(lambda: enc(pv, mel[..., None]))
    res["vae_decode_first_s"], res["vae_decode_s"] = _timed(lambda: dec(pv, z))
    res["unet_first_s"], res["unet_s"] = _timed(lambda: un(pu, x, jnp.full((1,), 501, jnp.int32)))
    x2 = jnp.concatenate([x, x])
    res["unet_cfg_pair_first_s"], res["unet_cfg_pair_s"] = _timed(lambda: un(pu, x2, jnp.full((2,), 501, jnp.int32)))
    res["vocoder_first_s"], res["vocoder_s"] = _timed(lambda: vo(pw, mel))

    options = SamplingOptions(steps=steps, guidance=3.5, eta=1.0)
    noise = draw_noise(item_keys(42, [0], [0]), (h, w, c), num_sampler_steps(options))
    res["sampling_first_s"], res["sampling_s"] = _timed(
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
