"""Which network makes `--dtype bfloat16` change the output: each network alone in bf16, the others fp32.

    python benchmarks/bf16_by_network.py --checkpoint DEMO/checkpoint --references DEMO/heldout \\
        --inputs out/bench_sampler_quality/inputs [--steps 10] [--workdir out/bf16_by_network]

`--inputs` is the low-passed set that bench_sampler_quality.py made from the references. For each of
none / vae / unet / vocoder in bf16, sample.py's batch engine runs DDIM `--steps` on every input (same seed)
and the outputs are scored (LSD, LSD-HF); for the bf16 variants it also prints the waveform SNR against the
all-fp32 outputs and the 5th percentile of the outputs' log-power spectrogram (the noise floor), which is
what LSD is most sensitive to in near-silent bins.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NETWORKS = ("none", "vae", "unet", "vocoder")


def _use_bf16_for(which: str) -> None:
    """Make the pipeline build `which` in bf16 and the other networks in fp32."""
    import jax
    import jax.numpy as jnp

    from audiosr_jax.inference import pipeline
    from audiosr_jax.models.unet import UNetModel
    from audiosr_jax.models.vae import AutoencoderKL
    from audiosr_jax.models.vocoder import HiFiGAN

    def networks(configs, options):
        dt = {k: jnp.bfloat16 if k == which else jnp.float32 for k in NETWORKS[1:]}
        vae, unet, voc, _ = configs
        return AutoencoderKL(vae, dtype=dt["vae"]), UNetModel(unet, dtype=dt["unet"]), HiFiGAN(voc, dtype=dt["vocoder"])

    pipeline._networks = networks
    jax.clear_caches()  # the jitted pipeline traced with the previous networks


def _floor_and_snr(out: Path, base: Path) -> tuple[float, float]:
    import librosa
    import numpy as np
    import soundfile as sf

    floors, snrs = [], []
    for f in sorted(out.rglob("*.wav")):
        y, _ = sf.read(f)
        x, _ = sf.read(base / f.relative_to(out))
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        floors.append(np.percentile(10 * np.log10(np.abs(librosa.stft(y, n_fft=2048, hop_length=480)) ** 2 + 1e-12), 5))
        snrs.append(10 * np.log10(np.sum(x ** 2) / max(np.sum((x - y) ** 2), 1e-20)))
    return float(np.mean(floors)), float(np.mean(snrs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--references", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workdir", default=os.path.join(REPO, "out", "bf16_by_network"))
    args = ap.parse_args()

    import numpy as np

    from audiosr_jax.lab import experiments as ex

    work = Path(args.workdir)
    print("| bf16 network | LSD | LSD-HF | noise floor (5th pct, dB) | SNR vs all-fp32 (dB) |")
    print("|---|---|---|---|---|")
    for which in NETWORKS:
        _use_bf16_for(which)
        out = work / which
        ex.super_resolve(Path(args.checkpoint), Path(args.inputs), out, steps=args.steps, seed=0)
        ok = [r for r in ex.score(out, Path(args.references), Path(args.inputs)) if r.get("status") == "ok"]
        floor, snr = _floor_and_snr(out, work / "none")
        snr_s = "-" if which == "none" else f"{snr:.1f}"
        print(f"| {which} | {np.mean([r['lsd'] for r in ok]):.3f} | {np.mean([r['lsd_hf'] for r in ok]):.3f} "
              f"| {floor:.1f} | {snr_s} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
