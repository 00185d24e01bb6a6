"""The README's main command: train a small AudioSR on real audio on the CPU, then beat the baseline.

    python -m audiosr_jax.lab.demo [--workdir out/demo] [--corpus DIR] [--minutes 20] [--steps-scale 1.0]

Every step writes into ``--workdir`` and is skipped on a rerun when its result is there, so an interrupted
demo resumes (training resumes from its last checkpoint):

1. **corpus**: ``data/build_corpus.py`` builds a real 48 kHz corpus (Bach chorales rendered with a GM
   SoundFont, Spanish speech, game sound effects) from PyPI/Debian packages (``--corpus DIR`` reuses one).
2. **dataset**: the TFDS ``audio_segments`` ArrayRecord dataset (10.24 s segments; files split by a hash of
   their path into train / validation, so held-out clips come from recordings never seen in training).
3. **vae**, 4. **vocoder**, 5. **ldm**: ``train.py`` for each stage on the tiny preset with the overrides
   below (printed as the equivalent ``train.py`` command), the LDM on the frozen VAE of step 3.
6. **export**: one inference checkpoint (``python export.py``), LDM weights from its EMA.
7. **held-out test**: 5.12 s clips from the validation split, low-passed at 2, 4, 8 and 12 kHz (order-8
   elliptic, as ``python evaluate.py --simulate``), super-resolved by ``sample.py`` (50 DDIM
   steps, guidance 3.5, loudness matched to the input) and scored against the full-band clips
   (``python evaluate.py``) with spectrogram PNGs (input / output / reference).

The last table compares, per cutoff, the LSD of the outputs with the LSD of the low-passed inputs
themselves (the baseline: doing nothing). The exit status is 0 only when the model beats the baseline at
every cutoff. On this 2-core CPU it took 30 minutes with other jobs on the machine (most of it training).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from audiosr_jax.lab import experiments as ex

# Per-stage overrides of the tiny presets (audiosr_jax/configs/<stage>.py:tiny). Steps are multiplied by --steps-scale.
# The VAE trains without its adversarial term: in a few hundred steps the PatchGAN only slows the L1 fit.
STAGE_OVERRIDES = {
    "vae": {"train.total_steps": 500, "vae.adversarial": False, "train.batch_size": 4,
            "data.crop_samples": 30_720, "train.eval_batch_size": 4, "train.eval_every": 250,
            "train.save_every": 100},
    "vocoder": {"train.total_steps": 400, "train.eval_every": 200, "train.save_every": 100},
    "ldm": {"train.total_steps": 500, "train.batch_size": 4, "train.eval_batch_size": 4,
            "train.eval_every": 250, "train.save_every": 100},
}
STEP_KEYS = ("train.total_steps", "train.eval_every", "train.save_every")


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def stage_overrides(stage: str, workdir: Path, dataset: Path, steps_scale: float = 1.0) -> dict:
    """The ``--config.<key>`` overrides of one stage's tiny preset in the demo (dotted keys → values)."""
    o = dict(STAGE_OVERRIDES[stage])
    for k in STEP_KEYS:
        o[k] = max(1, int(round(o[k] * steps_scale)))
    o["data.dataset_dir"] = str(dataset)
    if stage == "ldm":
        o["ldm.vae_from"] = str(workdir / "vae")
    return o


def build_corpus(out: Path, cache: Path, minutes: float) -> Path:
    """``data/build_corpus.py`` into ``out`` (reused when its manifest exists)."""
    if (out / "manifest.json").is_file():
        log(f"corpus: {out} exists, reused")
        return out
    script = ex.REPO / "data" / "build_corpus.py"
    if not script.is_file():
        raise SystemExit(f"error: {script} not found: run the demo from a checkout of audiosr-jax, or pass --corpus DIR")
    log(f"corpus: building {minutes:g} minutes of real audio into {out} (packages cached in {cache})")
    subprocess.run([sys.executable, str(script), "--out", str(out), "--cache", str(cache), "--minutes", str(minutes)],
                   check=True)
    return out


def build_segments(corpus: Path, data_dir: Path) -> Path:
    """The TFDS segments dataset of ``corpus`` under ``data_dir`` (reused when built); returns its version dir."""
    from audiosr_jax.data.segments import SegmentConfig, build_dataset, builder_config_for

    version_dir = data_dir / "audio_segments" / builder_config_for(SegmentConfig()).name / "1.0.0"
    if (version_dir / "dataset_info.json").is_file():
        log(f"dataset: {version_dir} exists, reused")
        return version_dir
    sources = [(d, str(corpus / d)) for d in ("music", "speech", "effects") if (corpus / d).is_dir()]
    return Path(build_dataset(sources, str(data_dir)))


def train_all(work: Path, dataset: Path, steps_scale: float = 1.0) -> None:
    """VAE, vocoder, then the LDM on the frozen VAE, each in ``work/<stage>``."""
    for stage in ("vae", "vocoder", "ldm"):
        ex.train_stage(stage, work / stage, stage_overrides(stage, work, dataset, steps_scale), say=log)


def export(work: Path) -> Path:
    """One inference checkpoint from the three workdirs (LDM from its EMA) in ``work/checkpoint``."""
    from audiosr_jax.training.export import export_weights

    out = work / "checkpoint"
    if (out / "architecture.json").is_file():
        log(f"export: {out} exists, reused")
        return out
    export_weights(str(work / "vae"), str(work / "ldm"), str(work / "vocoder"), str(out), use_ema=True)
    log(f"export: {out}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join("out", "demo"), type=Path)
    ap.add_argument("--corpus", type=Path, help="an existing corpus folder (default: build WORKDIR/corpus)")
    ap.add_argument("--cache", type=Path, default=Path("out") / "corpus_cache", help="package cache of the corpus build")
    ap.add_argument("--minutes", type=float, default=20.0, help="minutes of audio in a corpus built here")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's training steps")
    ap.add_argument("--clips", type=int, default=6, help="held-out clips (each tested at every cutoff)")
    ap.add_argument("--sampler-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.5)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only notices while reading trained stages
    from audiosr_jax.runtime import enable_compilation_cache

    enable_compilation_cache()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = args.corpus or build_corpus(work / "corpus", args.cache, args.minutes)
    dataset = build_segments(corpus, work / "tfds")
    train_all(work, dataset, args.steps_scale)
    checkpoint = export(work)
    refs, inputs, outputs = work / "heldout", work / "inputs", work / "outputs"
    clips = ex.held_out_clips(dataset, refs, args.clips)
    log(f"held-out: {len(clips)} clips of {ex.CLIP_SECONDS} s from the validation split in {refs}")
    ex.simulate_inputs(refs, inputs, ex.CUTOFFS_HZ)
    log(f"super-resolving {len(clips) * len(ex.CUTOFFS_HZ)} inputs (cutoffs "
        f"{', '.join(f'{c // 1000}' for c in ex.CUTOFFS_HZ)} kHz) with {args.sampler_steps} DDIM steps, "
        f"guidance {args.guidance:g}")
    ex.super_resolve(checkpoint, inputs, outputs, steps=args.sampler_steps, guidance=args.guidance)
    rows = ex.score(outputs, refs, inputs, png_dir=work / "png")
    table = ex.per_cutoff(rows)
    (work / "results.json").write_text(json.dumps({"table": table, "files": rows}, indent=2, default=str))
    print(ex.format_per_cutoff(table))
    log(f"spectrograms (input / output / reference): {work / 'png'}; per-file scores: {work / 'results.json'}; "
        f"total {time.perf_counter() - t0:.0f} s")
    if len(table) == len(ex.CUTOFFS_HZ) and all(e["beats_baseline"] for e in table):
        log("the trained model beats the low-passed input at every cutoff")
        return 0
    log("the model does NOT beat the low-passed input at every cutoff (train longer: --steps-scale 2)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
