"""Low-resolution inputs from full-band references, with the reference pipeline's filter chain, and the
manifest that pairs them back."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from audiosr_jax.audio import atomic_write
from audiosr_jax.errors import AudioError, UserError
from audiosr_jax.evaluation.pairing import MANIFEST, MANIFEST_FORMAT, scan_audio
from audiosr_jax.evaluation.scoring import (
    EVAL_SR,
    at_eval_rate,
    measure_cutoff_hz,
    read_audio,
)

FILTER_TYPES = ("ellip", "cheby1", "butter", "bessel", "cheby2")


def parse_cutoffs(text: str) -> list[float]:
    """``"4000,8000"`` / ``"4k,8kHz"`` -> [4000.0, 8000.0] (Hz). Raises UserError on a bad entry."""
    out = []
    for part in text.split(","):
        p = part.strip().lower().removesuffix("hz").strip()
        scale = 1000.0 if p.endswith("k") else 1.0
        try:
            value = float(p.removesuffix("k")) * scale
        except ValueError:
            raise UserError(f"--simulate: {part.strip()!r} is not a cutoff in Hz (e.g. 4000 or 4k)") from None
        if not 1.0 <= value < EVAL_SR / 2:
            raise UserError(f"--simulate: cutoff {value:g} Hz outside [1, {EVAL_SR // 2}) Hz")
        out.append(float(int(value)))  # the filter chain uses int(cutoff) Hz
    if not out:
        raise UserError("--simulate: no cutoff given")
    return sorted(set(out))


def simulate(
    references: str,
    out_dir: str,
    cutoffs_hz: list[float],
    *,
    ftype: str = "ellip",
    order: int = 8,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[dict, list[str], list[str]]:
    """Low-pass every reference at every cutoff and write the inputs and a manifest (step 1 of the flow).

    Each reference (any rate: resampled to 48 kHz with soxr first) goes through
    ``lowpass.lowpass_filter(x, cutoff, 48000, order, ftype)`` per channel and is written as a 48 kHz float
    WAV ``<out_dir>/lp<cutoff>/<relative path>.wav`` (atomically). ``<out_dir>/manifest.json`` lists for each
    input: ``input`` (relative to out_dir), ``reference`` (relative to references), ``cutoff_hz``, ``filter``,
    ``order``, ``channels``, ``samples``, ``reference_sr`` and ``detected_cutoff_hz`` (what the pipeline's
    detector measures on the written input).

    Returns: ``(manifest, problems, warnings)``.
    Raises: UserError: missing references folder, bad filter / order, an existing manifest without
      ``overwrite``, out_dir inside references (the inputs would be taken for references).
    """
    from audiosr_jax.inference.lowpass import lowpass_filter

    if not os.path.isdir(references):
        raise UserError(f"{references}: --references folder does not exist")
    if ftype not in FILTER_TYPES:
        raise UserError(f"--filter must be one of {', '.join(FILTER_TYPES)}, got {ftype!r}")
    if not 2 <= order <= 10:
        raise UserError(f"--order must be in [2, 10] (the reference clamps it there), got {order}")
    ref_abs, out_abs = os.path.abspath(references), os.path.abspath(out_dir)
    if out_abs == ref_abs or out_abs.startswith(ref_abs + os.sep):
        raise UserError(f"{out_dir}: the simulated inputs must not go inside the references folder")
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path) and not overwrite:
        raise UserError(f"{manifest_path}: already exists (a previous simulation; use --overwrite)")
    import soundfile as sf

    problems: list[str] = []
    warnings: list[str] = []
    items = []
    refs = scan_audio(references)
    if not refs:
        raise UserError(f"{references}: no audio files found")
    it = refs
    if progress:
        from tqdm import tqdm

        it = tqdm(refs, desc="simulate", unit="file", file=sys.stderr, leave=False, disable=None)
    for rel in it:
        path = os.path.join(references, rel)
        try:
            x, sr = read_audio(path)
        except AudioError as e:
            problems.append(str(e))
            continue
        if not np.any(x):
            problems.append(f"{path}: audio is silent (all samples zero); nothing to simulate")
            continue
        if sr != EVAL_SR:
            warnings.append(f"{path}: {sr} Hz reference resampled to {EVAL_SR} Hz")
        x = at_eval_rate(x, sr)
        for cutoff in cutoffs_hz:
            if sr <= 2 * cutoff:
                warnings.append(f"{path}: a {sr} Hz reference has no content above {cutoff:g} Hz to remove")
            y = lowpass_filter(x, cutoff, EVAL_SR, order, ftype).astype(np.float32)
            in_rel = os.path.join(f"lp{int(cutoff)}", os.path.splitext(rel)[0] + ".wav")
            atomic_write(os.path.join(out_dir, in_rel),
                          lambda tmp, y=y: sf.write(tmp, y.T, EVAL_SR, subtype="FLOAT", format="WAV"))
            items.append({
                "input": in_rel.replace(os.sep, "/"), "reference": rel.replace(os.sep, "/"), "cutoff_hz": cutoff,
                "filter": ftype, "order": order, "channels": int(x.shape[0]), "samples": int(x.shape[-1]),
                "reference_sr": sr, "detected_cutoff_hz": measure_cutoff_hz(y),
            })
    manifest = {
        "format": MANIFEST_FORMAT, "version": 1, "sample_rate": EVAL_SR, "references": ref_abs,
        "filter": ftype, "order": order, "cutoffs_hz": list(cutoffs_hz), "items": items,
        "chain": "audiosr_jax.inference.lowpass.lowpass_filter: sosfiltfilt -> resample_poly down to 2*cutoff and up "
                 "-> sosfiltfilt (the reference audiosr/lowpass.py lowpass)",
    }

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)

    atomic_write(manifest_path, write)
    return manifest, problems, warnings
