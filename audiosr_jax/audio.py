"""Audio I/O and the mel front-end of AudioSR (reference: ``audiosr/utils.py``).

Order of operations, as in the reference ``read_wav_file`` / ``read_audio_file``:

1. load (the reference keeps channel 0 only; here every channel is returned and processed alike),
2. resample to 48 kHz,
3. ``normalize_wav``: remove the mean, scale the peak to 0.5 (per channel),
4. zero-pad at the end to the next multiple of 5.12 s (245 760 samples),
5. log-mel / STFT of the padded waveform (``mel_spectrogram_train`` + ``pad_spec``).

The low-pass conditioning (``audiosr_jax.inference.lowpass``) then runs on the normalised, *padded* waveform.

Deliberate differences from the reference:

* Resampling uses soxr (very high quality) instead of torchaudio's windowed sinc (``sinc_interp_hann``,
  width 6, roll-off 0.99). At 48 kHz input both are the identity.
* Padding is computed in integer samples. The reference computes the padded duration in float seconds
  (``duration + (5.12 - duration % 5.12)``) and truncates ``48000 * pad_duration`` / ``pad_duration * 100``
  with ``int()``; for about 1 file length in 2000 that yields one sample / one frame less (e.g. 245 759
  samples, 511 frames).
* Input validation: the reference accepts whatever torchaudio loads; here unusable files raise
  :class:`audiosr_jax.errors.AudioError` with a one-line message naming the file.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.errors import AudioError

SAMPLE_RATE = 48000
HOP = 480
N_FFT = 2048
N_MELS = 256
SEGMENT_SAMPLES = 245760  # 5.12 s at 48 kHz = 512 frames of HOP
MEL_FMIN = 20.0
MEL_FMAX = 24000.0
LOG_FLOOR = 1e-5  # log(clip(mel, 1e-5)); the log-mel floor is log(1e-5) = -11.5129

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000

# reflect padding of mel_spectrogram_train: (n_fft - hop) / 2 on each side, so that with center=False a
# signal of N samples gives N // HOP frames
_STFT_PAD = (N_FFT - HOP) // 2  # 784


# ----------------------------------------------------------------------------------------------------------
# loading and waveform preparation (numpy, host)
# ----------------------------------------------------------------------------------------------------------


def _fail(path, problem: str) -> AudioError:
    return AudioError(f"{os.fspath(path)}: {problem}")


def load_audio(path, max_channels: int = 2) -> tuple[np.ndarray, int]:
    """Read an audio file with soundfile (any format libsndfile reads: wav, flac, ogg, ...).

    Args:
      path: file path.
      max_channels: files with more channels are rejected.

    Returns:
      ``(audio, sr)``: float32 array [C, N] (samples in [-1, 1] for integer formats) and the file's
      native sample rate in Hz.

    Raises:
      AudioError (one line naming the file) when the file is missing, not a regular file, empty, not
      audio / corrupt, has zero frames, NaN or inf samples, a sample rate outside [1000, 768000] Hz,
      more than ``max_channels`` channels, or is silent (every channel constant, e.g. all zeros: after the
      mean removal of ``normalize_wav`` nothing would be left).
    """
    import soundfile as sf

    p = os.fspath(path)
    if not os.path.exists(p):
        raise _fail(p, "no such file")
    if not os.path.isfile(p):
        raise _fail(p, "not a regular file")
    if os.path.getsize(p) == 0:
        raise _fail(p, "empty file (0 bytes)")
    try:
        info = sf.info(p)
    except Exception as e:  # libsndfile error: not audio, unknown format, truncated header
        raise _fail(p, f"not a readable audio file ({_one_line(e)})") from None
    if info.frames <= 0:
        raise _fail(p, "audio has zero length (no sample frames)")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise _fail(
            p, f"unsupported sample rate {info.samplerate} Hz (expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})"
        )
    if info.channels > max_channels:
        raise _fail(p, f"{info.channels} channels, at most {max_channels} supported")
    try:
        data, sr = sf.read(p, dtype="float32", always_2d=True)
    except Exception as e:  # corrupt data after a valid header
        raise _fail(p, f"corrupt audio data ({_one_line(e)})") from None
    return check_audio(np.ascontiguousarray(data.T), int(sr), p, max_channels), int(sr)


def check_input_array(x, sr: int, name: str, max_channels: int = 2) -> np.ndarray:
    """`check_audio` for audio a caller passes in memory: also refuses soundfile's [N, C] layout given by
    mistake for [C, N] (more samples than rows, at most 16 columns). Returns float32 [C, N]."""
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[0] > x.shape[1] and x.shape[1] <= 16:
        raise _fail(name, f"shape {x.shape} looks like [samples, channels]; pass [channels, samples]")
    return check_audio(x, sr, name, max_channels)


def check_audio(x: np.ndarray, sr: int, name: str, max_channels: int = 2) -> np.ndarray:
    """Validate audio already in memory: float32 [C, N] (or [N] for mono) at `sr` Hz. Returns float32 [C, N].

    Raises AudioError (one line starting with `name`) for a wrong rank, zero samples, a sample rate outside
    [1000, 768000] Hz, more than `max_channels` channels, NaN/inf samples, or silence (every channel constant)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _fail(name, f"expected a numeric array [samples] or [channels, samples], got shape {x.shape} "
                          f"of {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):  # PCM integers: full scale is ±1, as soundfile reads them
        x = x / float(np.iinfo(x.dtype).max + 1)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[1] == 0:
        raise _fail(name, "audio has zero length (no sample frames)")
    if not MIN_SAMPLE_RATE <= int(sr) <= MAX_SAMPLE_RATE:
        raise _fail(name, f"unsupported sample rate {sr} Hz (expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})")
    if x.shape[0] > max_channels:
        raise _fail(name, f"{x.shape[0]} channels, at most {max_channels} supported")
    if not np.all(np.isfinite(x)):
        bad = "NaN" if np.isnan(x).any() else "infinite"
        raise _fail(name, f"audio contains {bad} samples")
    if np.all(x == x[:, :1]):
        what = "all samples are zero" if not np.any(x) else "every channel is constant"
        raise _fail(name, f"audio is silent ({what})")
    return x


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def resample(x: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample along the last axis with soxr ("VHQ"); identity (same array) when ``sr == target_sr``.

    Args:
      x: float array [..., N] at ``sr`` Hz.
    Returns:
      float32 array [..., M] with M = round(N * target_sr / sr) (soxr's length rule).
    """
    if int(sr) == int(target_sr):
        return x
    import soxr

    x = np.asarray(x, dtype=np.float32)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    # soxr wants [N, C]; all channels in one call share the filter state setup
    y = soxr.resample(np.ascontiguousarray(flat.T), int(sr), int(target_sr), quality="VHQ")
    y = np.asarray(y, dtype=np.float32).reshape(-1, flat.shape[0]).T
    return np.ascontiguousarray(y.reshape(*lead, y.shape[-1]))


def normalize_wav(x: np.ndarray) -> np.ndarray:
    """The reference ``normalize_wav`` along the last axis: ``x -= mean; x /= max|x| + 1e-8; x *= 0.5``.

    Args: x [..., N]. Returns: same shape and dtype, peak 0.5 per row (zero rows stay zero).
    """
    x = np.asarray(x)
    x = x - np.mean(x, axis=-1, keepdims=True)
    x = x / (np.max(np.abs(x), axis=-1, keepdims=True) + 1e-8)
    return x * 0.5


def pad_to_segments(x: np.ndarray, segment: int = SEGMENT_SAMPLES) -> np.ndarray:
    """Zero-pad the last axis at the end to the next multiple of ``segment`` (a multiple stays as is).

    Args: x [..., N]. Returns: [..., ceil(N / segment) * segment], same dtype.
    """
    n = x.shape[-1]
    target = -(-n // segment) * segment
    if target == n:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, target - n)]
    return np.pad(x, pad)


def prepare_waveform(source, max_channels: int = 2) -> tuple[np.ndarray, dict]:
    """Load a file (or take audio in memory) and prepare it as the reference's ``read_wav_file`` does.

    source: a path, or ``(audio, sample_rate)`` with audio [N] or [C, N] (float, or PCM integers).
    load -> resample to 48 kHz -> ``normalize_wav`` (per channel) -> zero-pad to a multiple of 5.12 s.

    Returns:
      ``(wave, info)``: float32 [C, N] at 48 kHz with N a multiple of ``SEGMENT_SAMPLES``, and a dict with
      ``orig_sr`` (Hz), ``channels``, ``duration_s`` (of the original), ``samples`` (48 kHz samples
      before padding: cut the output to this), ``padded_samples`` (= N) and ``frames`` (= N // HOP).
    Raises:
      AudioError as :func:`load_audio` / :func:`check_audio`.
    """
    if isinstance(source, tuple):
        sr = int(source[1])
        audio = check_input_array(source[0], sr, "audio array", max_channels)
    else:
        audio, sr = load_audio(source, max_channels=max_channels)
    wave = resample(audio, sr, SAMPLE_RATE)
    n = wave.shape[-1]
    wave = normalize_wav(wave).astype(np.float32)
    wave = pad_to_segments(wave, SEGMENT_SAMPLES)
    info = {
        "orig_sr": int(sr),
        "channels": int(audio.shape[0]),
        "duration_s": audio.shape[-1] / sr,
        "samples": int(n),
        "padded_samples": int(wave.shape[-1]),
        "frames": int(wave.shape[-1] // HOP),
    }
    return wave, info


# ----------------------------------------------------------------------------------------------------------
# STFT / mel front-end (JAX)
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def hann_periodic(n: int) -> np.ndarray:
    """The periodic Hann window of length n (torch.hann_window(n), scipy get_window("hann", n)), float64 [n]."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


def frame_signal(x: jnp.ndarray, n_fft: int, hop: int, n_frames: int) -> jnp.ndarray:
    """Frames ``x[..., t*hop : t*hop + n_fft]`` for t < n_frames, without a gather.

    The signal is cut into blocks of ``hop`` and each frame is the concatenation of ``ceil(n_fft/hop)``
    consecutive blocks (the last one cropped), which stays cheap and layout-friendly on accelerators.

    Args: x [..., L] with L >= (n_frames - 1) * hop + n_fft. Returns: [..., n_frames, n_fft].
    """
    n_full, rem = divmod(n_fft, hop)
    n_blocks = n_frames + n_full + (1 if rem else 0)
    need = n_blocks * hop
    length = x.shape[-1]
    lead = [(0, 0)] * (x.ndim - 1)
    x = x[..., :need] if length >= need else jnp.pad(x, lead + [(0, need - length)])
    blocks = x.reshape(*x.shape[:-1], n_blocks, hop)
    parts = [blocks[..., i : i + n_frames, :] for i in range(n_full)]
    if rem:
        parts.append(blocks[..., n_full : n_full + n_frames, :rem])
    return jnp.concatenate(parts, axis=-1)


def stft_mag_frames(wave: jnp.ndarray) -> jnp.ndarray:
    """[..., N] float32 at 48 kHz -> magnitude STFT [..., N // HOP, 1025]: reflect pad, hop-aligned framing,
    periodic Hann, rfft, |.|."""
    n_frames = wave.shape[-1] // HOP  # ((n + 2*784) - 2048) // 480 + 1
    pad = [(0, 0)] * (wave.ndim - 1) + [(_STFT_PAD, _STFT_PAD)]
    padded = jnp.pad(wave, pad, mode="reflect")
    frames = frame_signal(padded, N_FFT, HOP, n_frames) * jnp.asarray(hann_periodic(N_FFT))
    return jnp.abs(jnp.fft.rfft(frames, n=N_FFT, axis=-1))


def _per_item(fn: Callable, wave: jnp.ndarray):
    # CPU: one batch item at a time (lax.map). Batched, the [B, T, 2048] frames and [B, T, 1025] complex
    # spectra stream through memory between the framing, the FFT and |.|; one item's (4 MiB for 5.12 s)
    # stay in cache, which measured ~3x faster on one core. Accelerators take the batched form.
    lead = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1])
    out = jax.lax.map(fn, flat)
    return jax.tree.map(lambda a: a.reshape(*lead, *a.shape[1:]), out)


@jax.jit
def stft_magnitude(wave: jnp.ndarray) -> jnp.ndarray:
    """|STFT| exactly as ``mel_spectrogram_train``: reflect pad 784 each side, periodic Hann 2048, hop 480,
    ``center=False``, onesided, magnitude (power 1), no normalisation.

    Args: wave [B, N] float (N >= 785; N a multiple of 480 in practice). Returns: float32 [B, N // 480, 1025].
    """
    wave = jnp.asarray(wave, jnp.float32)
    return jax.lax.platform_dependent(
        wave, cpu=lambda w: _per_item(stft_mag_frames, w), default=stft_mag_frames
    )


@functools.lru_cache(maxsize=None)
def mel_filterbank() -> np.ndarray:
    """librosa.filters.mel(sr=48000, n_fft=2048, n_mels=256, fmin=20, fmax=24000), Slaney scale and norm.

    Returns: read-only float32 [256, 1025] (cached).
    """
    import librosa

    fb = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=MEL_FMIN, fmax=MEL_FMAX, htk=False, norm="slaney"
    ).astype(np.float32)
    fb.flags.writeable = False
    return fb


_MEL_GROUP = 16  # filters per block of the banded projection (measured best of 4..64 on CPU)


@functools.lru_cache(maxsize=None)
def _mel_blocks() -> tuple[tuple[int, int, np.ndarray], ...]:
    """The filterbank as dense blocks: ``(lo, hi, w [hi - lo, k])`` per run of ``_MEL_GROUP`` consecutive
    filters, [lo, hi) the union of their nonzero bins. Every Slaney filter covers one contiguous bin range
    (2030 nonzeros of 256 x 1025), so the blocks hold ~17k weights instead of 262k and drop only zeros."""
    fb = mel_filterbank()
    nz = fb != 0
    blocks = []
    for g0 in range(0, fb.shape[0], _MEL_GROUP):
        rows = nz[g0 : g0 + _MEL_GROUP]
        cols = np.flatnonzero(rows.any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        w = np.ascontiguousarray(fb[g0 : g0 + _MEL_GROUP, lo:hi].T)
        w.flags.writeable = False
        blocks.append((lo, hi, w))
    return tuple(blocks)


def mel_banded(mag: jnp.ndarray) -> jnp.ndarray:
    """Mel projection [..., 1025] -> [..., 256] as one small matmul per block of filters over its bin range
    (the CPU path: far fewer FLOPs than the dense projection)."""
    hp = jax.lax.Precision.HIGHEST
    parts = [jnp.dot(mag[..., lo:hi], jnp.asarray(w), precision=hp) for lo, hi, w in _mel_blocks()]
    return jnp.concatenate(parts, axis=-1)


def mel_dense(mag: jnp.ndarray) -> jnp.ndarray:
    """Mel projection [..., 1025] -> [..., 256] as one dense matmul (the accelerator path)."""
    # HIGHEST: keep the projection in true fp32 on GPU/TPU (default precision may use TF32 / bf16 passes)
    return jnp.einsum("...f,mf->...m", mag, jnp.asarray(mel_filterbank()), precision=jax.lax.Precision.HIGHEST)


def log_mel_from(mag: jnp.ndarray, project: Callable) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(log-mel [..., T, 256] with the reference's floor, the first 1024 STFT bins [..., T, 1024]) from a
    magnitude STFT [..., T, 1025]; `project` is `mel_banded` or `mel_dense`."""
    log_mel = jnp.log(jnp.maximum(project(mag), LOG_FLOOR))
    return log_mel, mag[..., : N_FFT // 2]


@jax.jit
def log_mel_spectrogram(wave: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The reference front-end (``mel_spectrogram_train`` + ``pad_spec``) for a batch of waveforms.

    Args:
      wave: [B, N] float, 48 kHz, normalised and padded (N a multiple of 480, normally of 245 760).
    Returns:
      ``(log_mel, stft)``: log_mel float32 [B, N // 480, 256] = log(clip(mel_fb @ |S|, 1e-5)), and the
      magnitude STFT float32 [B, N // 480, 1024] (the last of the 1025 bins dropped as ``pad_spec`` does).
    """
    wave = jnp.asarray(wave, jnp.float32)

    def cpu(w):
        # per item, with the banded projection (the same sums less the zero terms; within ~5e-7 relative)
        return _per_item(lambda x: log_mel_from(stft_mag_frames(x), mel_banded), w)

    def default(w):
        return log_mel_from(stft_mag_frames(w), mel_dense)

    return jax.lax.platform_dependent(wave, cpu=cpu, default=default)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Create `path` by calling `write(tmp)` on a hidden temporary file in the same folder, then renaming it,
    so a crash, Ctrl-C or kill never leaves a half-written file under the final name. The temporary name
    contains ".partial-" (batch runs remove stale ones). The file gets the permissions of any file the user
    creates (0666 less the umask), not the temporary file's private 0600."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    ext = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".partial-", suffix=ext, dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_audio(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write [C, n] float audio atomically; the format follows the extension (wav/flac/aiff as 24-bit PCM).

    Encoded in memory first, so a full or failing disk raises OSError with its errno (ENOSPC, EIO, ...)
    rather than libsndfile's errno-less "System error"."""
    import io

    import soundfile as sf

    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").upper()
    subtype = {"WAV": "PCM_24", "FLAC": "PCM_24", "AIFF": "PCM_24"}.get(fmt)  # 24-bit: no audible quantisation
    buf = io.BytesIO()
    sf.write(buf, np.ascontiguousarray(np.asarray(waveform).T), sample_rate, format=fmt, subtype=subtype)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def truncation_note(path: str | os.PathLike) -> str:
    """A one-line note when a WAV file holds fewer sample frames than its header declares (the data was cut
    off, e.g. an interrupted copy: libsndfile then reads what is there as a shorter file), else ""."""
    import soundfile as sf

    p = os.fspath(path)
    try:
        info = sf.info(p)
        declared = _wav_declared_frames(p)
    except Exception:
        return ""
    if declared is None or declared <= info.frames:
        return ""
    return (f"{p}: truncated: the header declares {declared} sample frames ({declared / info.samplerate:.2f} s), "
            f"the file holds {info.frames} ({info.frames / info.samplerate:.2f} s); processed what is there")


def _wav_declared_frames(path: str) -> int | None:
    """Frames declared by a RIFF/WAVE header's data chunk; None if not such a file or the size is unknown."""
    import struct

    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size)
                block = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
                f.seek(size % 2, 1)
            elif cid == b"data":
                if not block or size in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                    return None
                return size // block
            else:
                f.seek(size + size % 2, 1)
