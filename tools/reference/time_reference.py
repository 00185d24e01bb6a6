"""Time the official AudioSR 0.0.7 stage by stage on the parity clip (run inside .refenv).

    .refenv/bin/python tools/reference/time_reference.py --width full --sampling-steps 50

Everything runs in one process on the reference model with synthetic weights (reference_model.py), on
`audiosr_jax.lab.synthetic.parity_clip(48000, 3.0)` (padded by the reference to 5.12 s: a 512x256 mel, a 64x32
latent). Progress goes to stderr; stdout gets exactly one JSON object {stage: seconds, ...} with:

  import_s             importing patches + audiosr (+ audiosr_jax.lab.synthetic)
  build_s              building LatentDiffusion and setting the synthetic weights
  frontend_s           make_batch_for_super_resolution: wav read, normalise, pad, mel, cutoff, ellip low-pass, mel
  vae_encode_s         first_stage_model.encode of the [1, 1, 512, 256] low-pass mel
  vae_decode_s         first_stage_model.decode of a [1, 16, 64, 32] latent
  unet_s               one model.apply_model call (DiffusionWrapper + UNet) on a 64x32 latent
  vocoder_s            first_stage_model.vocoder on [1, 256, 512] (245 776 samples)
  generate_batch_s     model.generate_batch with `--sampling-steps` DDIM steps, guidance 3.5, eta 1.0
  generate_batch_steps, guidance_scale, width, torch_threads, peak_rss_gb (ru_maxrss of this process),
  loadavg_start / loadavg_end (1-min load average: the machine is shared, so read timings against it),
  rss_after_build_gb / rss_end_gb (VmRSS; the peak includes the transient numpy copy of the synthetic weights)
  peak_rss_run_gb      peak RSS from after the build to the end (Linux: VmHWM reset through clear_refs), i.e.
                       what running the model holds, without the synthetic-weight construction

Each single-module stage is timed `--repeats` times after `--warmup` untimed runs; the minimum is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as rm  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import audiosr.pipeline as pipeline  # noqa: E402
from audiosr_jax.lab.synthetic import parity_clip  # noqa: E402

IMPORT_S = time.perf_counter() - T_START


def log(msg: str) -> None:
    print(f"[time_reference] {msg}", file=sys.stderr, flush=True)


def timed(fn, repeats: int = 1, warmup: int = 0):
    """(min seconds over `repeats` runs after `warmup` untimed runs, the last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def status_gb(field: str = "VmRSS") -> float:
    """A /proc/self/status size of this process in GB (VmRSS: now; VmHWM: peak since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def rss_gb() -> float:
    """Current resident set size of this process in GB (VmRSS)."""
    return status_gb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv=None) -> None:
    """Parse arguments, run the stages with the reference's own prints sent to stderr, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", choices=sorted(rm.WIDTHS), default="reduced")
    ap.add_argument("--sampling-steps", type=int, default=50, help="DDIM steps for generate_batch (default 50)")
    ap.add_argument("--guidance-scale", type=float, default=3.5)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per single-module stage (min is kept)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed runs before each single-module stage")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # audiosr prints progress to stdout
        res = run(args)
    print(json.dumps(res), flush=True)


def run(args) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    res = {"width": args.width, "torch_threads": torch.get_num_threads(), "import_s": IMPORT_S,
           "loadavg_start": os.getloadavg()[0]}

    t0 = time.perf_counter()
    model, _, weights = rm.build_reference_model(args.width)
    del weights
    res["build_s"] = time.perf_counter() - t0
    res["rss_after_build_gb"] = rss_gb()
    log(f"built the {args.width} model in {res['build_s']:.1f} s")
    hwm_reset = reset_peak_rss()
    rw = dict(repeats=args.repeats, warmup=args.warmup)

    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "clip.wav")
        sf.write(wav, parity_clip(48000, 3.0), 48000, subtype="FLOAT")

        def frontend():
            pipeline.seed_everything(42)
            return pipeline.make_batch_for_super_resolution(wav)

        res["frontend_s"], (batch, duration) = timed(frontend, **rw)
        log(f"front-end {res['frontend_s']:.3f} s")

        vae = model.first_stage_model
        mel = batch["lowpass_mel"][:, None]  # [1, 1, 512, 256]
        res["vae_encode_s"], posterior = timed(lambda: vae.encode(mel), **rw)
        log(f"VAE encode {res['vae_encode_s']:.3f} s")
        z = posterior.mean  # [1, 16, 64, 32]
        res["vae_decode_s"], _ = timed(lambda: vae.decode(z), **rw)
        log(f"VAE decode {res['vae_decode_s']:.3f} s")

        t = torch.full((1,), 501, dtype=torch.long)
        cond = {"concat_lowpass_cond": posterior.sample()}
        res["unet_s"], _ = timed(lambda: model.apply_model(torch.randn_like(z), t, cond), **rw)
        log(f"one UNet call {res['unet_s']:.3f} s")
        voc_in = batch["lowpass_mel"].permute(0, 2, 1).contiguous()  # [1, 256, 512]
        res["vocoder_s"], wave = timed(lambda: vae.vocoder(voc_in), **rw)
        log(f"vocoder {res['vocoder_s']:.3f} s -> {tuple(wave.shape)}")

        # the full pipeline on the batch from the front-end, seeded as super_resolution does
        pipeline.seed_everything(42)
        t0 = time.perf_counter()
        model.generate_batch(batch, unconditional_guidance_scale=args.guidance_scale,
                             ddim_steps=args.sampling_steps, duration=duration)
        res["generate_batch_s"] = time.perf_counter() - t0
        log(f"generate_batch ({args.sampling_steps} steps) {res['generate_batch_s']:.1f} s")
    res["generate_batch_steps"] = args.sampling_steps
    res["guidance_scale"] = args.guidance_scale
    res["loadavg_end"] = os.getloadavg()[0]
    res["rss_end_gb"] = rss_gb()
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    res["peak_rss_run_gb"] = status_gb("VmHWM") if hwm_reset else None
    return res


if __name__ == "__main__":
    main()
