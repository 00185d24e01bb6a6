"""Measure super-resolved outputs against full-band references, per input cutoff; simulate low-res inputs.

Evaluate outputs of real low-resolution inputs::

    python -m audiosr_jax.evaluate --outputs OUT --references REFS [--inputs LOWRES]
        [--csv report.csv] [--json report.json] [--png PNGDIR]

Measure the model on your own full-band (48 kHz) recordings, in two steps:

1. ``python -m audiosr_jax.evaluate --simulate 4000,8000,12000 --references REFS --inputs SIM``
   low-passes every reference at each cutoff with the reference pipeline's filter chain (order-8 elliptic by
   default; ``--filter``, ``--order``; ``audiosr_jax.inference.lowpass.lowpass_filter``: sosfiltfilt, polyphase
   down/up to twice the cutoff, sosfiltfilt) and writes 48 kHz float WAVs ``SIM/lp<cutoff Hz>/<relative
   path>.wav`` plus ``SIM/manifest.json`` (each input's reference, cutoff, filter and measured cutoff).
2. Run the model on ``SIM`` into ``OUT`` keeping the relative paths (``OUT/lp4000/a/b.wav``; the batch
   command mirrors them), then evaluate with the same arguments as step 1 minus ``--simulate``::

       python -m audiosr_jax.evaluate --outputs OUT --references REFS --inputs SIM [--csv ...] [--png ...]

   The manifest found in ``SIM`` (or given with ``--manifest``) pairs each output with its reference and
   supplies the exact simulated cutoff.

Pairing (without a manifest): files are matched by their path relative to each folder, without the
extension (``OUT/a/b.wav`` <-> ``REFS/a/b.flac``), else by a unique file stem. A leading ``lp<N>`` folder in
an output's path is the simulated cutoff ``N`` Hz and is not part of the reference's name; the suffix of the
official AudioSR CLI (``_AudioSR_Processed_48K``, ``--suffix``) is ignored.

Cutoff of each output, in this order: the manifest's; ``lowpass.detect_cutoff_hz`` (the pipeline's 98.5 %
cumulative-magnitude rule) on the matching input in ``--inputs``; the ``lp<N>`` folder name; else unknown.

Per file (everything resampled to 48 kHz with soxr when needed, channel counts reconciled by a mono mix,
lengths trimmed to the shorter; see ``audiosr_jax.metrics`` for the definitions and their sources):
``lsd`` (ssr_eval, as AudioSR / NVSR report it), ``lsd_hf`` / ``lsd_lf`` (NU-Wave 2 family, generated / kept
band), ``lsd_nuwave2`` (NU-Wave 2 full band), ``lsd_energy_scaled`` (AudioSR README 2025-06), ``si_sdr``,
``snr``, and with an input the same LSDs of the input itself (``input_*``: the baseline a model must beat).

The table printed at the end has one row per cutoff bucket (``--bucket-khz``, default 1 kHz) with n and
mean ± std (over files, ddof 0) of LSD, LSD-HF, LSD-LF and SI-SDR. Files are averaged directly (ssr_eval
averages per speaker first). Missing pairs, unreadable files and undefined metrics are reported at the end,
one line each, and make the exit status 1 (2 for a usage error).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import sys

import numpy as np

from audiosr_jax import metrics
from audiosr_jax.audio import atomic_write
from audiosr_jax.errors import AudioError, UserError

__all__ = [
    "EVAL_SR",
    "Report",
    "read_audio",
    "measure_cutoff_hz",
    "evaluate_file",
    "evaluate",
    "bucket_khz",
    "summarize",
    "format_table",
    "write_csv",
    "write_json",
    "load_manifest",
    "parse_cutoffs",
    "simulate",
    "save_spectrogram_png",
    "main",
]

EVAL_SR = 48000
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "audiosr_jax.evaluate.simulate"
DEFAULT_SUFFIXES = ("_AudioSR_Processed_48K",)
FILTER_TYPES = ("ellip", "cheby1", "butter", "bessel", "cheby2")
_LP_DIR = re.compile(r"^lp(\d+)$", re.IGNORECASE)
_AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64",
    ".rf64", ".wv", ".voc", ".sd2", ".htk", ".ircam", ".sf", ".mat", ".nist", ".paf", ".pvf", ".xi", ".mpc",
}

TABLE_METRICS = (("lsd", "LSD"), ("lsd_hf", "LSD-HF"), ("lsd_lf", "LSD-LF"), ("si_sdr", "SI-SDR"))
CSV_FIELDS = (
    "output", "reference", "input", "status", "error", "cutoff_hz", "cutoff_source", "cutoff_bucket_khz",
    "detected_cutoff_hz", "output_sr", "reference_sr", "channels", "duration_s", "length_diff_s",
    "lsd", "lsd_hf", "lsd_lf", "lsd_nuwave2", "lsd_energy_scaled", "si_sdr", "snr",
    "input_lsd", "input_lsd_hf", "input_lsd_lf", "png",
)


# ----------------------------------------------------------------------------------------------------------
# audio helpers
# ----------------------------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Read any file soundfile reads. Unlike ``audio.load_audio`` a silent file is accepted (a silent
    *output* is a result to score, not an error).

    Returns: ``(x, sr)``: float32 [C, N] and the file's sample rate (Hz).
    Raises: AudioError (one line naming the file): missing, empty, unreadable, no frames, NaN / inf samples.
    """
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile: not audio, corrupt, unknown format
        raise AudioError(f"{path}: not a readable audio file ({_one_line(e)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio has zero length (no sample frames)")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(sr)


def _at_eval_rate(x: np.ndarray, sr: int) -> np.ndarray:
    from audiosr_jax.audio import resample

    return resample(x, sr, EVAL_SR)


def _match_channels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Same channel count for both: unchanged if equal, else both mixed down to mono. Returns (a, b, mixed)."""
    if a.shape[0] == b.shape[0]:
        return a, b, False
    return a.mean(axis=0, keepdims=True), b.mean(axis=0, keepdims=True), True


def measure_cutoff_hz(x: np.ndarray) -> float | None:
    """Bandwidth of a 48 kHz signal as the pipeline detects it (``lowpass.detect_cutoff_hz``).

    Same STFT as ``audio.stft_magnitude`` (reflect pad 784, periodic Hann 2048, hop 480, ``center=False``,
    bins 0..1023) after the mean removal of ``normalize_wav`` (the gain does not matter), computed in numpy
    blocks and summed over time; no 5.12 s zero padding (zeros add no magnitude). Each channel is measured
    and the widest returned.

    Args: x [N] or [C, N] at 48 kHz. Returns: Hz (``k / 1024 * 24000``), or None when shorter than 785 samples.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    from audiosr_jax.inference.lowpass import detect_cutoff_hz

    n_fft, hop, pad = 2048, 480, (2048 - 480) // 2
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    best = None
    for ch in np.atleast_2d(np.asarray(x, dtype=np.float64)):
        if ch.shape[-1] <= pad:
            return None
        ch = np.pad(ch - ch.mean(), pad, mode="reflect")
        n_frames = (ch.shape[-1] - n_fft) // hop + 1
        frames = sliding_window_view(ch, n_fft)[::hop][:n_frames]
        total = np.zeros(n_fft // 2 + 1)
        for s in range(0, n_frames, 1024):
            total += np.abs(np.fft.rfft(frames[s : s + 1024] * win, axis=-1)).sum(axis=0)
        hz = detect_cutoff_hz(total[None, : n_fft // 2])
        best = hz if best is None else max(best, hz)
    return best


def save_spectrogram_png(
    path: str, panels: list[tuple[str, np.ndarray]], sr: int = EVAL_SR, cutoff_hz: float | None = None,
    max_seconds: float = 30.0,
) -> None:
    """Write side-by-side log-magnitude spectrograms (matplotlib, Agg backend).

    Args:
      path: PNG file to write (folders created).
      panels: ``[(title, x)]`` with x [N] or [C, N] at ``sr`` (mixed to mono), e.g. input, output, reference.
      cutoff_hz: drawn as a dashed line on every panel when given.
      max_seconds: only the first ``max_seconds`` are drawn (keeps the image readable and the work bounded).
    The colour scale (dB) is shared: the top is the loudest bin over all panels, the range 100 dB.
    """
    try:
        import matplotlib
    except ImportError:
        raise UserError("--png needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_fft, hop = 2048, 480
    specs = []
    for title, x in panels:
        mono = np.atleast_2d(np.asarray(x, dtype=np.float64)).mean(axis=0)[: int(max_seconds * sr)]
        mag = metrics.stft_magnitude(mono, n_fft, hop) if mono.size else np.zeros((1, n_fft // 2 + 1))
        specs.append((title, 20.0 * np.log10(np.maximum(mag, 1e-6)).T, mono.size / sr))
    top = max(float(s.max()) for _, s, _ in specs)
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs) + 1.0, 3.6), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (title, s, seconds) in zip(axes[0], specs):
        im = ax.imshow(s, origin="lower", aspect="auto", cmap="magma", vmin=top - 100.0, vmax=top,
                       extent=(0.0, max(seconds, 1e-3), 0.0, sr / 2000.0), interpolation="nearest")
        if cutoff_hz:
            ax.axhline(cutoff_hz / 1000.0, color="cyan", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time (s)")
    axes[0][0].set_ylabel("frequency (kHz)")
    fig.colorbar(im, ax=axes[0].tolist(), label="dB")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# pairing
# ----------------------------------------------------------------------------------------------------------


def _is_audio(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in _AUDIO_EXTENSIONS and not name.startswith(".")


def _scan(root: str) -> list[str]:
    """Audio files below root (recursive, hidden files such as partial writes skipped), relative, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_audio(name):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def _key(rel: str, suffixes=()) -> str:
    stem = os.path.splitext(rel)[0].replace(os.sep, "/")
    for suffix in suffixes:
        if suffix and stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _split_lp(key: str) -> tuple[str, float | None]:
    """``"lp4000/a/b"`` -> ``("a/b", 4000.0)``: the first ``lp<N>`` folder is a simulated cutoff."""
    parts = key.split("/")
    for i, part in enumerate(parts[:-1]):
        m = _LP_DIR.match(part)
        if m:
            return "/".join(parts[:i] + parts[i + 1 :]), float(m.group(1))
    return key, None


class _Index:
    """Lookup of a folder's audio files by key (relative path without extension), else by unique stem."""

    def __init__(self, root: str, suffixes=(), warnings: list[str] | None = None):
        self.root = root
        self.by_key: dict[str, str] = {}
        self.by_stem: dict[str, list[str]] = {}
        for rel in _scan(root):
            key = _key(rel, suffixes)
            if key in self.by_key:
                if warnings is not None:
                    warnings.append(f"{os.path.join(root, rel)}: ignored, same name as {self.path(self.by_key[key])}")
                continue
            self.by_key[key] = rel
            self.by_stem.setdefault(key.rsplit("/", 1)[-1], []).append(rel)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def find(self, key: str) -> str | None:
        """The file with this key, else the only one with the same stem and the same ``lp<N>`` folder."""
        if key in self.by_key:
            return self.by_key[key]
        tag = _split_lp(key)[1]
        same = [r for r in self.by_stem.get(key.rsplit("/", 1)[-1], []) if _split_lp(_key(r))[1] == tag]
        return same[0] if len(same) == 1 else None


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """Result of :func:`evaluate`: one row per output (dicts with the ``CSV_FIELDS`` keys), the per-cutoff
    table (:func:`summarize`), problems (one line each; they make the exit status 1) and warnings."""

    rows: list[dict]
    table: list[dict]
    problems: list[str]
    warnings: list[str]
    settings: dict

    def to_json(self) -> dict:
        return {"settings": self.settings, "table": self.table, "files": self.rows, "problems": self.problems,
                "warnings": self.warnings}


def bucket_khz(cutoff_hz: float | None, width_khz: float = 1.0) -> float | None:
    """Cutoff bucket: the cutoff in kHz rounded to the nearest multiple of ``width_khz`` (None stays None)."""
    if cutoff_hz is None:
        return None
    return round(cutoff_hz / 1000.0 / width_khz) * width_khz


def evaluate_file(
    output: str,
    reference: str,
    input: str | None = None,
    cutoff_hz: float | None = None,
    cutoff_source: str | None = None,
    *,
    png: str | None = None,
    png_seconds: float = 30.0,
    max_length_diff_s: float = 0.1,
    warnings: list[str] | None = None,
) -> dict:
    """Every metric for one output file against its reference (and its input, when known).

    Args:
      output, reference, input: audio file paths (any rate: resampled to 48 kHz).
      cutoff_hz / cutoff_source: the input's cutoff when known (manifest / name); otherwise measured on
        ``input`` (source "detected"); None leaves LSD-HF / LSD-LF empty.
      png: write the spectrogram PNG (input, output, reference) there.
      max_length_diff_s: a larger length difference is reported in ``warnings`` (likely mispaired files; the
        metrics still use the common length, as ssr_eval would for < 100 samples).
    Returns:
      a row dict with the ``CSV_FIELDS`` keys (``status`` "ok"); metrics that do not apply are None.
    Raises:
      AudioError (unreadable file) or metrics.MetricError (silent reference, too short ...).
    """
    warnings = warnings if warnings is not None else []
    row = dict.fromkeys(CSV_FIELDS)
    row.update(output=output, reference=reference, input=input, status="ok")
    out, out_sr = read_audio(output)
    ref, ref_sr = read_audio(reference)
    row.update(output_sr=out_sr, reference_sr=ref_sr)
    out, ref = _at_eval_rate(out, out_sr), _at_eval_rate(ref, ref_sr)
    out, ref, mixed = _match_channels(out, ref)
    if mixed:
        warnings.append(f"{output}: channel count differs from {reference}; both mixed to mono")
    n = min(out.shape[-1], ref.shape[-1])
    row.update(channels=ref.shape[0], duration_s=n / EVAL_SR,
               length_diff_s=(out.shape[-1] - ref.shape[-1]) / EVAL_SR)
    if abs(row["length_diff_s"]) > max_length_diff_s:
        warnings.append(f"{output}: {out.shape[-1] / EVAL_SR:.3f} s but its reference {reference} is "
                        f"{ref.shape[-1] / EVAL_SR:.3f} s; scored on the first {n / EVAL_SR:.3f} s")

    inp = None
    if input is not None:
        inp, in_sr = read_audio(input)
        inp = _at_eval_rate(inp, in_sr)
        row["detected_cutoff_hz"] = measure_cutoff_hz(inp)
        if cutoff_hz is None and row["detected_cutoff_hz"] is not None:
            cutoff_hz, cutoff_source = row["detected_cutoff_hz"], "detected"
    row.update(cutoff_hz=cutoff_hz, cutoff_source=cutoff_source if cutoff_hz is not None else None)

    row["lsd"] = metrics.lsd(ref, out, EVAL_SR)
    row["lsd_energy_scaled"] = metrics.lsd_energy_scaled(ref, out, EVAL_SR)
    row["si_sdr"] = metrics.si_sdr(ref, out)
    row["snr"] = metrics.snr(ref, out)
    split = cutoff_hz
    if split is not None and not 0 < metrics.band_split_index(split, EVAL_SR) < metrics.NUWAVE_N_FFT // 2 + 1:
        warnings.append(f"{output}: cutoff {split:.0f} Hz leaves no generated band; LSD-HF / LSD-LF left empty")
        split = None
    bands = metrics.lsd_bands(ref, out, split, EVAL_SR)
    row.update(lsd_nuwave2=bands["lsd"], lsd_hf=bands.get("lsd_hf"), lsd_lf=bands.get("lsd_lf"))

    if inp is not None:
        inp_m, ref_m, _ = _match_channels(inp, ref)
        row["input_lsd"] = metrics.lsd(ref_m, inp_m, EVAL_SR)
        if split is not None:
            b = metrics.lsd_bands(ref_m, inp_m, split, EVAL_SR)
            row.update(input_lsd_hf=b["lsd_hf"], input_lsd_lf=b["lsd_lf"])

    if png:
        panels = [("input", input, inp)] if inp is not None else []
        panels += [("output", output, out), ("reference", reference, ref)]
        save_spectrogram_png(png, [(f"{role}: {os.path.basename(p)}", x) for role, p, x in panels],
                             EVAL_SR, cutoff_hz, png_seconds)
        row["png"] = png
    return row


def _plan(outputs: str, references: str, inputs: str | None, manifest: dict | None, suffixes, problems, warnings):
    """List of (output, reference, input, cutoff_hz, cutoff_source, key) to evaluate; missing pairs go to
    ``problems``."""
    outs = _Index(outputs, suffixes, warnings)
    refs = _Index(references, (), warnings)
    plan, used_outputs = [], set()
    if manifest is not None:
        base = manifest.get("_dir", inputs)
        for item in manifest["items"]:
            key = _key(item["input"])
            ref = os.path.join(references, item["reference"])
            rel = outs.find(key)
            if rel is None:
                problems.append(f"{os.path.join(outputs, key)}.*: missing output for simulated input {item['input']}")
                continue
            used_outputs.add(rel)
            inp = os.path.join(base, item["input"]) if base else None
            if inp is not None and not os.path.isfile(inp):
                warnings.append(f"{inp}: simulated input not found (no baseline / input panel)")
                inp = None
            plan.append((outs.path(rel), ref, inp, float(item["cutoff_hz"]), "manifest", key))
        for key, rel in outs.by_key.items():
            if rel not in used_outputs:
                problems.append(f"{outs.path(rel)}: not in the manifest (no reference / cutoff known)")
        return plan

    ins = _Index(inputs, (), warnings) if inputs else None
    used_refs, used_inputs = set(), set()
    for key, rel in outs.by_key.items():
        ref_key, named_cutoff = _split_lp(key)
        ref_rel = refs.find(ref_key)
        if ref_rel is None:
            problems.append(f"{outs.path(rel)}: no reference named {ref_key}.* in {references}")
            continue
        used_refs.add(ref_rel)
        inp = None
        if ins is not None:
            in_rel = ins.find(key)
            if in_rel is None:
                problems.append(f"{outs.path(rel)}: no input named {key}.* in {inputs}")
            else:
                used_inputs.add(in_rel)
                inp = ins.path(in_rel)
        source = "name" if named_cutoff is not None else None
        plan.append((outs.path(rel), refs.path(ref_rel), inp, named_cutoff, source, key))
    for rel in refs.by_key.values():
        if rel not in used_refs:
            problems.append(f"{refs.path(rel)}: reference without an output in {outputs}")
    if ins is not None:
        for rel in ins.by_key.values():
            if rel not in used_inputs:
                problems.append(f"{ins.path(rel)}: input without an output in {outputs}")
    return plan


def load_manifest(path: str) -> dict:
    """Read a ``--simulate`` manifest. Raises UserError (one line) when missing or malformed."""
    try:
        with open(path) as f:
            m = json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the manifest ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a valid manifest (JSON error: {e.msg} at line {e.lineno})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("items"), list):
        raise UserError(f"{path}: not a manifest written by --simulate")
    for item in m["items"]:
        if not isinstance(item, dict) or not {"input", "reference", "cutoff_hz"} <= item.keys():
            raise UserError(f"{path}: manifest item without input / reference / cutoff_hz: {item!r}")
    m["_dir"] = os.path.dirname(os.path.abspath(path))
    return m


def evaluate(
    outputs: str,
    references: str,
    inputs: str | None = None,
    *,
    manifest: str | None = None,
    png_dir: str | None = None,
    png_seconds: float = 30.0,
    bucket_width_khz: float = 1.0,
    max_length_diff_s: float = 0.1,
    suffixes=DEFAULT_SUFFIXES,
    progress: bool = False,
) -> Report:
    """Pair and score every output (see the module docstring for the pairing and cutoff rules).

    Args:
      outputs, references: folders (searched recursively). inputs: optional folder of the model's inputs
        (a ``manifest.json`` there is used unless ``manifest`` names another file).
      png_dir: write ``<png_dir>/<output relative path>.png`` per file.
      bucket_width_khz: width of the cutoff buckets of the table.
    Returns:
      a :class:`Report`. Unusable files / metrics become ``status="failed"`` rows and problems; nothing raises
      for a single bad file.
    Raises:
      UserError: a folder that does not exist, an unreadable manifest.
    """
    for name, folder in (("--outputs", outputs), ("--references", references), ("--inputs", inputs)):
        if folder is not None and not os.path.isdir(folder):
            raise UserError(f"{folder}: {name} folder does not exist")
    if manifest is None and inputs is not None and os.path.isfile(os.path.join(inputs, MANIFEST)):
        manifest = os.path.join(inputs, MANIFEST)
    man = load_manifest(manifest) if manifest else None
    if man is not None and inputs is not None:
        man["_dir"] = inputs
    problems: list[str] = []
    warnings: list[str] = []
    plan = _plan(outputs, references, inputs, man, suffixes, problems, warnings)
    rows = []
    items = plan
    if progress:
        from tqdm import tqdm

        items = tqdm(plan, desc="evaluate", unit="file", file=sys.stderr, leave=False, disable=None)
    for out, ref, inp, cutoff, source, key in items:
        png = os.path.join(png_dir, key + ".png") if png_dir else None
        try:
            row = evaluate_file(out, ref, inp, cutoff, source, png=png, png_seconds=png_seconds,
                                max_length_diff_s=max_length_diff_s, warnings=warnings)
        except (AudioError, metrics.MetricError) as e:
            msg = str(e) if isinstance(e, AudioError) else f"{out}: {e}"
            problems.append(msg)
            row = dict.fromkeys(CSV_FIELDS)
            row.update(output=out, reference=ref, input=inp, status="failed", error=msg, cutoff_hz=cutoff,
                       cutoff_source=source if cutoff is not None else None)
        row["cutoff_bucket_khz"] = bucket_khz(row["cutoff_hz"], bucket_width_khz)
        rows.append(row)
    settings = {
        "outputs": outputs, "references": references, "inputs": inputs, "manifest": manifest,
        "sample_rate": EVAL_SR, "bucket_width_khz": bucket_width_khz,
        "metrics": {
            "lsd": "ssr_eval 0.0.7 AudioMetrics.lsd (AudioSR/NVSR): n_fft 2229, hop 480, librosa.stft zero pad",
            "lsd_hf/lsd_lf/lsd_nuwave2": "NU-Wave 2 for_test.py: n_fft 2048, hop 512, log10(max(|X|^2,1e-8)), "
                                         "split bin int(1025*2*cutoff/48000)",
            "lsd_energy_scaled": "ssr_eval LSD after matching the lowest 10% of bins (AudioSR README 2025-06)",
            "si_sdr": "10 log10(|a s|^2/|a s - est|^2), a=<est,s>/|s|^2, clipped to +-100 dB",
            "snr": "20 log10(|s|/|est - s|) (NU-Wave 2 / AP-BWE), clipped to +-100 dB",
        },
    }
    return Report(rows, summarize(rows), problems, warnings, settings)


def summarize(rows: list[dict]) -> list[dict]:
    """Per-cutoff-bucket statistics of the ``ok`` rows, buckets ascending, then "unknown", then "all".

    Returns: dicts ``{"cutoff_khz": label, "n": files, "<metric>_mean": ..., "<metric>_std": ...,
    "<metric>_n": ...}`` for the ``TABLE_METRICS`` (mean / std over the files that have the metric, std
    with ddof 0; None when no file has it).
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    groups: dict = {}
    for r in ok:
        groups.setdefault(r.get("cutoff_bucket_khz"), []).append(r)
    order = sorted(k for k in groups if k is not None) + ([None] if None in groups else [])
    table = []
    for label, members in [(k, groups[k]) for k in order] + ([("all", ok)] if ok else []):
        entry = {"cutoff_khz": "unknown" if label is None else (label if label == "all" else f"{label:g}"),
                 "n": len(members)}
        for name, _ in TABLE_METRICS:
            vals = np.array([r[name] for r in members if r.get(name) is not None], dtype=np.float64)
            entry[f"{name}_n"] = int(vals.size)
            entry[f"{name}_mean"] = float(vals.mean()) if vals.size else None
            entry[f"{name}_std"] = float(vals.std()) if vals.size else None
        table.append(entry)
    return table


def format_table(table: list[dict]) -> str:
    """The per-cutoff table as aligned text (one row per bucket, mean ± std)."""
    headers = ["cutoff (kHz)", "n"] + [title for _, title in TABLE_METRICS]
    lines = []
    for entry in table:
        cells = [str(entry["cutoff_khz"]), str(entry["n"])]
        for name, _ in TABLE_METRICS:
            mean, std = entry[f"{name}_mean"], entry[f"{name}_std"]
            digits = 2 if name == "si_sdr" else 3
            cells.append("-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines]
    out.append("LSD: ssr_eval (AudioSR/NVSR; n_fft 2229, hop 480). LSD-HF / LSD-LF: NU-Wave 2 (n_fft 2048, hop 512)"
               " above / below the cutoff. SI-SDR in dB. mean ± std over files.")
    return "\n".join(out)


def _clean(v):
    # JSON / CSV friendly, recursively: numpy scalars to Python, non-finite floats to None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_csv(rows: list[dict], path: str) -> None:
    """One line per output file with the ``CSV_FIELDS`` columns (empty cells for metrics that do not apply)."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if _clean(r.get(k)) is None else _clean(r.get(k))) for k in CSV_FIELDS})

    atomic_write(path, write)


def write_json(report: Report, path: str) -> None:
    """Settings, table, per-file rows, problems and warnings as one JSON object."""
    data = _clean(report.to_json())

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)

    atomic_write(path, write)


# ----------------------------------------------------------------------------------------------------------
# simulation
# ----------------------------------------------------------------------------------------------------------


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
    refs = _scan(references)
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
        x = _at_eval_rate(x, sr)
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


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m audiosr_jax.evaluate",
        description="Score super-resolved outputs against 48 kHz references (LSD, LSD-HF, LSD-LF, SI-SDR per "
                    "cutoff), or --simulate low-resolution inputs from full-band references.",
        epilog="Two-step flow: --simulate 4000,8000 --references REFS --inputs SIM; run the model on SIM into "
               "OUT; then --outputs OUT --references REFS --inputs SIM.",
    )
    p.add_argument("--outputs", help="folder of model outputs (searched recursively)")
    p.add_argument("--references", required=True, help="folder of full-band references (48 kHz)")
    p.add_argument("--inputs", help="folder of the model's inputs (cutoff detection, baseline, PNG panel); "
                                    "with --simulate, where the simulated inputs are written")
    p.add_argument("--manifest", help="manifest of a --simulate run (default: INPUTS/manifest.json if present)")
    p.add_argument("--csv", help="write per-file results as CSV")
    p.add_argument("--json", help="write settings, table, per-file results and problems as JSON")
    p.add_argument("--png", metavar="DIR", help="write a spectrogram PNG (input, output, reference) per file")
    p.add_argument("--png-seconds", type=float, default=30.0, help="seconds drawn per PNG (default 30)")
    p.add_argument("--bucket-khz", type=float, default=1.0, help="width of the cutoff buckets (default 1 kHz)")
    p.add_argument("--max-length-diff", type=float, default=0.1,
                   help="warn when output and reference lengths differ by more (seconds, default 0.1)")
    p.add_argument("--suffix", action="append", default=None,
                   help="output-name suffix to ignore when pairing (default: _AudioSR_Processed_48K); repeatable")
    p.add_argument("--simulate", metavar="CUTOFF[,CUTOFF...]",
                   help="low-pass the references at these cutoffs (Hz, or 4k) into --inputs, with a manifest")
    p.add_argument("--filter", default="ellip", choices=FILTER_TYPES, help="--simulate filter type (default ellip)")
    p.add_argument("--order", type=int, default=8, help="--simulate filter order (default 8, as the pipeline)")
    p.add_argument("--overwrite", action="store_true", help="--simulate: replace an earlier simulation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _report_lines(title: str, lines: list[str]) -> None:
    if lines:
        print(f"{title} ({len(lines)}):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)


def main(argv=None) -> int:
    """Command-line entry point. Exit status: 0 all files scored, 1 problems (listed at the end), 2 usage."""
    args = parse_args(argv)
    progress = not args.no_progress
    try:
        if args.simulate is not None:
            if not args.inputs:
                raise UserError("--simulate needs --inputs DIR (where the simulated inputs are written)")
            cutoffs = parse_cutoffs(args.simulate)
            manifest, problems, warnings = simulate(args.references, args.inputs, cutoffs, ftype=args.filter,
                                                    order=args.order, overwrite=args.overwrite, progress=progress)
            n_refs = len({it["reference"] for it in manifest["items"]})
            print(f"wrote {len(manifest['items'])} inputs ({n_refs} references x {len(cutoffs)} cutoffs, "
                  f"{args.filter} order {args.order}) to {args.inputs}; manifest {os.path.join(args.inputs, MANIFEST)}")
            print(f"next: run the model on {args.inputs} into OUT (same relative paths), then\n"
                  f"  python -m audiosr_jax.evaluate --outputs OUT --references {args.references} --inputs {args.inputs}")
            _report_lines("warnings", warnings)
            _report_lines("problems", problems)
            return 1 if problems else 0
        if not args.outputs:
            raise UserError("--outputs DIR is required (or --simulate to make inputs)")
        if args.bucket_khz <= 0:
            raise UserError(f"--bucket-khz must be positive, got {args.bucket_khz}")
        suffixes = tuple(args.suffix) if args.suffix else DEFAULT_SUFFIXES
        report = evaluate(args.outputs, args.references, args.inputs, manifest=args.manifest, png_dir=args.png,
                          png_seconds=args.png_seconds, bucket_width_khz=args.bucket_khz,
                          max_length_diff_s=args.max_length_diff, suffixes=suffixes, progress=progress)
        print(format_table(report.table) if report.table else "no file could be scored")
        if args.csv:
            write_csv(report.rows, args.csv)
        if args.json:
            write_json(report, args.json)
        _report_lines("warnings", report.warnings)
        _report_lines("problems", report.problems)
        return 1 if report.problems else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
