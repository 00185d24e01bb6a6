"""Scoring one output against its reference (and its low-resolution input): reading audio at the evaluation
rate, the cutoff measurement, every metric of `audiosr_jax.metrics`, optional spectrogram PNGs."""

from __future__ import annotations

import os

import numpy as np

from audiosr_jax import metrics
from audiosr_jax.audio import atomic_write
from audiosr_jax.data.bandwidth import measure_bandwidth
from audiosr_jax.errors import AudioError, UserError

EVAL_SR = 48000
# the columns of one row (`evaluate_file`), in the CSV's order
CSV_FIELDS = (
    "output", "reference", "input", "status", "error", "cutoff_hz", "cutoff_source", "cutoff_bucket_khz",
    "detected_cutoff_hz", "output_sr", "reference_sr", "channels", "duration_s", "length_diff_s",
    "lsd", "lsd_hf", "lsd_lf", "lsd_nuwave2", "lsd_energy_scaled", "si_sdr", "snr",
    "input_lsd", "input_lsd_hf", "input_lsd_lf", "reference_bandwidth_hz", "png",
)
# a reference whose measured bandwidth (data/bandwidth.py's 60 dB rule) is below this is scored within it
NARROW_REFERENCE_HZ = 0.95 * EVAL_SR / 2


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


def at_eval_rate(x: np.ndarray, sr: int) -> np.ndarray:
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
    within_reference_band: bool = True,
) -> dict:
    """Every metric for one output file against its reference (and its input, when known).

    Args:
      output, reference, input: audio file paths (any rate: resampled to 48 kHz).
      cutoff_hz / cutoff_source: the input's cutoff when known (manifest / name); otherwise measured on
        ``input`` (source "detected"); None leaves LSD-HF / LSD-LF empty.
      png: write the spectrogram PNG (input, output, reference) there.
      max_length_diff_s: a larger length difference is reported in ``warnings`` (likely mispaired files; the
        metrics still use the common length, as ssr_eval would for < 100 samples).
      within_reference_band: the reference's bandwidth is measured (``reference_bandwidth_hz``); when it is
        below ``NARROW_REFERENCE_HZ`` the NU-Wave 2 LSDs (lsd_nuwave2, LSD-HF, LSD-LF, and the input's) leave
        out the bins above it (``metrics.lsd_bands(max_hz=...)``); False scores every bin.
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
    out, ref = at_eval_rate(out, out_sr), at_eval_rate(ref, ref_sr)
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
        inp = at_eval_rate(inp, in_sr)
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
    row["reference_bandwidth_hz"] = measure_bandwidth(ref.mean(axis=0), EVAL_SR)
    max_hz = row["reference_bandwidth_hz"] if within_reference_band else None
    if max_hz is not None and max_hz >= NARROW_REFERENCE_HZ:
        max_hz = None
    bands = metrics.lsd_bands(ref, out, split, EVAL_SR, max_hz=max_hz)
    row.update(lsd_nuwave2=bands["lsd"], lsd_hf=bands.get("lsd_hf"), lsd_lf=bands.get("lsd_lf"))
    if split is not None and "lsd_hf" not in bands:
        warnings.append(f"{output}: the reference's bandwidth {max_hz:.0f} Hz is below the cutoff {split:.0f} Hz; "
                        "LSD-HF left empty")

    if inp is not None:
        inp_m, ref_m, _ = _match_channels(inp, ref)
        row["input_lsd"] = metrics.lsd(ref_m, inp_m, EVAL_SR)
        if split is not None:
            b = metrics.lsd_bands(ref_m, inp_m, split, EVAL_SR, max_hz=max_hz)
            row.update(input_lsd_hf=b.get("lsd_hf"), input_lsd_lf=b["lsd_lf"])

    if png:
        panels = [("input", input, inp)] if inp is not None else []
        panels += [("output", output, out), ("reference", reference, ref)]
        save_spectrogram_png(png, [(f"{role}: {os.path.basename(p)}", x) for role, p, x in panels],
                             EVAL_SR, cutoff_hz, png_seconds)
        row["png"] = png
    return row
