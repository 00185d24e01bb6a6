"""Are the seams between cross-faded windows audible? Spectral flux at the seams against the rest.

    python benchmarks/seams.py                      # two synthetic 120 s signals, 3 perturbation draws
    python benchmarks/seams.py --input song.flac    # a real recording (first channel, resampled to 48 kHz)

Separate diffusion runs over neighbouring windows agree below the input's cutoff (that band is copied from
the same low-passed input) and differ above it (independent noise). The benchmark imitates that without the
model: it splits a long signal with `windows.plan_windows`, and in every window keeps the band below
`--split` Hz (default 4 kHz) and replaces the band above it by

* "partly new" : the original high band + independent noise with the same envelope at -6 dB, or
* "all new"    : independent noise with the high band's envelope (a fully re-generated high band),

each times a random per-window gain of ±`--gain-db` dB (default: 1 dB, and 6 dB for "all new"), then
overlap-adds the windows with each plan below (one also with `compensate=True`, the correlation-compensated
fade) and reports `windows.seam_flux` (band-pooled log-spectral flux, hop 480) at the seams versus all other
frames, and the high-band level at the seam centres relative to elsewhere (an amplitude-complementary fade
of uncorrelated content dips by up to 3 dB there).

Two synthetic signals by default: "sustained" (held bright chords over steady -30 dB noise: nothing masks a
seam, the hard case) and "music" (notes, kick and hi-hats: onsets dominate the flux).

Columns: cost = window samples computed / signal samples; ratio = median seam flux / median rest flux (1 =
seams look like any other frame); tail = the same with 90th percentiles (a hard cut shows here first); base =
that statistic for the unprocessed signal at the same frames; peak = largest seam flux / rest 99th
percentile (grows with the number of seam frames: compare plans with similar fades); rank = fraction of rest
frames below the median seam frame (0.5 = no difference); HF dip = high-band level at the seam centres
relative to elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import signal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiosr_jax.inference import windows  # noqa: E402

SR = 48000
S = windows.SEGMENT

PLANS = {  # name: (max_window, overlap, fade) in samples, overlap_add(compensate=...)
    "hard cut (1.28 s ov, no fade)": (2 * S, S // 4, 0, False),
    "short fade 10 ms (1.28 s ov)": (2 * S, S // 4, 480, False),
    "fade 0.16 s (1.28 s ov)": (2 * S, S // 4, S // 32, False),
    "CHOSEN: 1.28 s ov, 1.28 s fade": (2 * S, S // 4, S // 4, False),
    "  same, compensate=True": (2 * S, S // 4, S // 4, True),
    "2.56 s ov, 2.56 s fade": (2 * S, S // 2, S // 2, False),
}


def synth_music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A deterministic music-like test signal [n]: overlapping harmonic notes (bright, up to 20 kHz) with
    decaying envelopes, a kick on the beat, hi-hats off the beat, and a quiet noise floor. Peak 0.5."""
    n = int(seconds * SR)
    x = np.zeros(n)
    table_len = 4096
    # one bright single-cycle waveform (harmonics 1/h^1.1 up to the 24 kHz band edge of the highest note)
    t = 0
    while t < n:
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        dur = int(rng.uniform(0.3, 1.5) * SR)
        m = min(dur, n - t)
        spec = np.zeros(table_len // 2 + 1, complex)
        h = np.arange(1, int(20000 / f0) + 1)
        spec[h] = (h ** -1.1) * np.exp(2j * np.pi * rng.random(h.size))
        table = np.fft.irfft(spec, table_len)
        phase = (f0 * np.arange(m) / SR * table_len).astype(np.int64) % table_len
        env = np.minimum(np.arange(m) / (0.005 * SR), 1.0) * np.exp(-np.arange(m) / (rng.uniform(0.2, 0.8) * SR))
        x[t : t + m] += rng.uniform(0.3, 1.0) * env * table[phase] / np.max(np.abs(table))
        t += int(rng.uniform(0.15, 0.6) * SR)
    beat = int(0.5 * SR)
    k = np.arange(int(0.3 * SR))
    kick = np.sin(2 * np.pi * np.cumsum(50 + 70 * np.exp(-k / (0.03 * SR))) / SR) * np.exp(-k / (0.12 * SR))
    hh_sos = signal.butter(4, 7000, "high", fs=SR, output="sos")
    for b in range(0, n, beat):
        m = min(k.size, n - b)
        x[b : b + m] += 0.8 * kick[:m]
        o = b + beat // 2
        if o < n:
            m = min(int(0.08 * SR), n - o)
            burst = signal.sosfilt(hh_sos, rng.standard_normal(m)) * np.exp(-np.arange(m) / (0.02 * SR))
            x[o : o + m] += 0.4 * burst
    x += 1e-3 * rng.standard_normal(n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float64)


def synth_sustained(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A deterministic stationary test signal [n]: slowly changing held chords (three bright notes, 3-8 s
    each, cross-fading) over steady broadband noise at -30 dB (room tone / tape hiss). Seams are easiest to
    hear here: nothing masks a change of high-band timbre. Peak 0.5."""
    n = int(seconds * SR)
    x = np.zeros(n)
    table_len = 4096
    t = 0
    while t < n:
        dur = int(rng.uniform(3.0, 8.0) * SR)
        m = min(dur + SR, n - t)
        env = np.minimum(np.minimum(np.arange(m), m - np.arange(m)) / (0.5 * SR), 1.0)
        for _ in range(3):
            f0 = 110.0 * 2 ** (rng.integers(0, 30) / 12)
            spec = np.zeros(table_len // 2 + 1, complex)
            h = np.arange(1, int(20000 / f0) + 1)
            spec[h] = (h ** -1.3) * np.exp(2j * np.pi * rng.random(h.size))
            table = np.fft.irfft(spec, table_len)
            phase = (f0 * np.arange(m) / SR * table_len).astype(np.int64) % table_len
            x[t : t + m] += env * table[phase] / np.max(np.abs(table))
        t += dur
    x = x / np.max(np.abs(x))
    x += 10 ** (-30 / 20) * rng.standard_normal(n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float64)


def load_input(path: str) -> np.ndarray:
    from audiosr_jax import audio

    x, sr = audio.load_audio(path, max_channels=64)
    return audio.normalize_wav(audio.resample(x[:1], sr, SR)[0]).astype(np.float64)


def split_bands(x: np.ndarray, split_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Complementary split (low + high == x): zero-phase 8th-order Butterworth low band, high = rest."""
    low = signal.sosfiltfilt(signal.butter(8, split_hz, fs=SR, output="sos"), x)
    return low, x - low


def envelope(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    m = max(1, int(seconds * SR))
    return np.sqrt(np.convolve(x**2, np.ones(m) / m, mode="same"))


def perturbed_windows(low, high, env, plan, mode, gain_db, split_hz, rng) -> np.ndarray:
    """[num_windows, window]: each window as a separate diffusion run would give it (see module docstring)."""
    sos = signal.butter(8, split_hz, "high", fs=SR, output="sos")
    low_w, high_w, env_w = (windows.cut_windows(v, plan) for v in (low, high, env))
    out = np.empty_like(low_w)
    for i in range(plan.num_windows):
        noise = signal.sosfilt(sos, rng.standard_normal(plan.window))
        noise *= env_w[i] / np.sqrt(np.mean(noise**2))
        new = 0.5 * noise + high_w[i] if mode == "partly new" else noise
        out[i] = low_w[i] + 10 ** (rng.uniform(-gain_db, gain_db) / 20) * new
    return out


def high_band_dip_db(y: np.ndarray, x: np.ndarray, plan, split_hz: float, hop: int = 480, n_fft: int = 1024) -> float:
    """High-band level of y relative to x (dB) at the frames centred within ±20 ms of each seam centre,
    minus the same at all frames: the level dip the fade leaves in content that differs between windows."""
    f = np.fft.rfftfreq(n_fft, 1 / SR) >= split_hz

    def hb_power(v):  # [rows, T]
        frames = np.lib.stride_tricks.sliding_window_view(v, n_fft, axis=-1)[..., ::hop, :]
        return np.sum(np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1))[..., f] ** 2, axis=-1)

    rel = 10 * np.log10(hb_power(y).mean(0) / (hb_power(x[None]).mean(0) + 1e-20) + 1e-20)
    centres = (np.arange(rel.size) * hop + n_fft // 2)
    near = np.zeros(rel.size, bool)
    for a, b in plan.seams:
        near |= np.abs(centres - (a + b) / 2) <= 0.02 * SR
    return float(np.median(rel[near]) - np.median(rel))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", help="audio file to use instead of the two synthetic signals")
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the synthetic signals")
    ap.add_argument("--draws", type=int, default=3, help="independent perturbation draws, pooled")
    ap.add_argument("--split", type=float, default=4000.0, help="Hz above which windows differ")
    ap.add_argument("--gain-db", default="1,6", help="random per-window high-band gains to try, ± dB, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    if args.input:
        signals = {os.path.basename(args.input): load_input(args.input)}
    else:
        signals = {"sustained": synth_sustained(args.seconds, rng), "music": synth_music(args.seconds, rng)}
    gains = [float(g) for g in args.gain_db.split(",")]
    cases = [("partly new", gains[0])] + [("all new", g) for g in gains]
    print(f"windows differ above {args.split:.0f} Hz; flux measured on 64 mel bands from {args.split:.0f} Hz "
          f"(the band where they differ), n_fft 1024, hop 480; {args.draws} draws pooled.")
    print("base = the same statistic of the unprocessed signal at the same frames (what 'no seam' looks like).\n")
    header = (f"{'signal':<10} {'windows differ':<21} {'plan':<31} {'win':>3} {'cost':>5} {'ratio':>6} {'base':>6} "
              f"{'tail':>6} {'base':>6} {'peak':>6} {'rank':>5} {'HF dip dB':>9}")
    print(header)
    print("-" * len(header))
    t0 = time.perf_counter()
    for sig_name, x in signals.items():
        n = x.size
        low, high = split_bands(x, args.split)
        env = envelope(high)
        for mode, gain in cases:
            for name, (max_window, overlap, fade, compensate) in PLANS.items():
                plan = windows.plan_windows(n, max_window=max_window, overlap=overlap, fade=fade)
                draw_rng = np.random.default_rng([args.seed, 1])  # the same draws for every plan
                wins = np.stack([perturbed_windows(low, high, env, plan, mode, gain, args.split, draw_rng)
                                 for _ in range(args.draws)])
                y = windows.overlap_add(wins, plan, compensate=compensate)  # [draws, n]
                r = windows.seam_flux(y, plan, fmin=args.split)
                b = windows.seam_flux(x, plan, fmin=args.split)
                dip = high_band_dip_db(y, x, plan, args.split)
                cost = plan.num_windows * plan.window / n
                what = f"{mode}, ±{gain:g} dB"
                print(f"{sig_name:<10} {what:<21} {name:<31} {plan.num_windows:>3} {cost:>5.2f} {r['ratio']:>6.3f} "
                      f"{b['ratio']:>6.3f} {r['tail_ratio']:>6.3f} {b['tail_ratio']:>6.3f} {r['peak_ratio']:>6.2f} "
                      f"{r['seam_rank']:>5.2f} {dip:>9.2f}")
            print()
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
