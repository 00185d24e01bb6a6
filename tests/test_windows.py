"""Long-audio windowing (audiosr_jax.inference.windows): plans, cut / overlap-add, seam measurement."""

import numpy as np
import pytest
from scipy import signal

from audiosr_jax import audio
from audiosr_jax.inference import windows
from audiosr_jax.inference.windows import SEGMENT, WindowPlan, bucket_length, cut_windows, overlap_add, plan_windows

S = SEGMENT
OV = windows.DEFAULT_OVERLAP


def _check_invariants(p: WindowPlan):
    assert p.starts[0] == 0 and p.window in (S, 2 * S)
    assert p.starts[-1] + p.window >= p.n
    if p.num_windows == 1:
        assert p.seams == () and p.window == bucket_length(p.n)
        return
    assert p.starts[-1] + p.window == p.n  # last window aligned to the end: no padding
    gaps = np.diff(p.starts)
    assert gaps.max() <= p.hop and p.window - gaps.max() >= OV  # every overlap at least the nominal one
    for (a, b), s0, s1 in zip(p.seams, p.starts, p.starts[1:]):
        assert b - a == p.fade and s1 <= a and b <= s0 + p.window  # the fade lies inside both windows
    assert all(r0[1] <= r1[0] for r0, r1 in zip(p.seams, p.seams[1:]))


@pytest.mark.parametrize(
    "n, window, starts",
    [
        (1, S, (0,)),
        (S - 1, S, (0,)),
        (S, S, (0,)),
        (S + 1, 2 * S, (0,)),
        (2 * S, 2 * S, (0,)),
        (2 * S + 1, 2 * S, (0, 1)),  # just over: two windows, the second aligned to the end
        (2 * S + (2 * S - OV), 2 * S, (0, 2 * S - OV)),  # exactly two windows at the nominal overlap
        (2 * S + (2 * S - OV) + 1, 2 * S, (0, (2 * S - OV + 1) // 2, 2 * S - OV + 1)),  # one more: three windows
    ],
)
def test_plan_edge_cases(n, window, starts):
    p = plan_windows(n)
    assert (p.n, p.window, p.starts) == (n, window, starts)
    assert p.fade == (OV if len(starts) > 1 else 0)
    _check_invariants(p)


def test_plan_long_and_sweep():
    p = plan_windows(3600 * 48000)  # one hour
    _check_invariants(p)
    assert p.num_windows == 1 + -(-(p.n - 2 * S) // (2 * S - OV))  # the fewest windows with that overlap
    assert p.num_windows * p.window / p.n < 1.15  # 10.24 / 8.96 = 1.143 asymptotically
    rng = np.random.default_rng(0)
    for n in [*rng.integers(1, 12 * S, 300), *range(2 * S - 3, 2 * S + 4), 4 * S - OV, 4 * S - OV + 1]:
        for kw in ({}, {"overlap": 2 * OV}, {"overlap": 2 * OV, "fade": OV // 2}, {"fade": 0}):
            p = plan_windows(int(n), **kw)
            assert p.window == bucket_length(int(n))
            if "overlap" not in kw:
                _check_invariants(p)


def test_bucket_lengths_only_two_values():
    rng = np.random.default_rng(1)
    ns = [1, S - 1, S, S + 1, 2 * S - 1, 2 * S, 2 * S + 1, 10**8, *rng.integers(1, 40 * S, 500)]
    assert {bucket_length(int(n)) for n in ns} == {S, 2 * S}
    assert bucket_length(S + 1, max_window=S) == S


def test_bad_arguments():
    for kw in ({"n": 0}, {"n": -5}, {"n": 10, "max_window": S + 1}, {"n": 3 * S, "overlap": 2 * S},
               {"n": 3 * S, "fade": OV + 1}, {"n": 3 * S, "overlap": -1}):
        with pytest.raises(ValueError):
            plan_windows(**kw)
    with pytest.raises(ValueError):
        WindowPlan(n=3 * S, window=2 * S, hop=S, starts=(0, S // 2), fade=0)  # does not reach n
    with pytest.raises(ValueError):
        overlap_add(np.zeros((2, 2 * S - 16)), plan_windows(3 * S))


def test_single_window_is_the_one_file_path():
    rng = np.random.default_rng(2)
    for n in (1000, S, S + 7, 2 * S):
        x = rng.standard_normal((2, n)).astype(np.float32)
        p = plan_windows(n)
        w = cut_windows(x, p)
        np.testing.assert_array_equal(w[:, 0], audio.pad_to_segments(x))
        # samples past n (e.g. a low-pass filter's tail over the padding) are used when given
        padded = np.concatenate([x, np.ones((2, p.window - n), np.float32)], axis=1)
        np.testing.assert_array_equal(cut_windows(padded, p)[:, 0], padded)
        np.testing.assert_array_equal(overlap_add(w, p), x)


@pytest.mark.parametrize("n", [2 * S + 1, 3 * S + 12345, 4 * S - OV + 1, 9 * S + 3])
def test_cut_then_overlap_add_is_exact(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, n)).astype(np.float32)
    for p in (plan_windows(n), plan_windows(n, fade=0), plan_windows(n, overlap=2 * OV, fade=OV)):
        w = cut_windows(x, p)
        assert w.shape == (2, p.num_windows, p.window) and w.dtype == np.float32
        for i, s in enumerate(p.starts):
            np.testing.assert_array_equal(w[:, i], x[:, s : s + p.window])
        for compensate in (True, False):
            y = overlap_add(w, p, compensate=compensate)
            assert y.shape == x.shape and y.dtype == np.float32
            np.testing.assert_allclose(y, x, rtol=0, atol=4e-6 * np.abs(x).max())


def test_constant_stays_constant_and_weights_sum_to_one():
    n = 5 * S + 999
    p = plan_windows(n)
    wts = windows.window_weights(p, np.float64)
    total = np.zeros(n)
    for w, s in zip(wts, p.starts):
        total[s : s + p.window] += w
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)
    assert np.all((wts >= 0) & (wts <= 1))
    # inside a fade every sample mixes both windows (no 0/1 weights there): a true cross-fade
    a, b = p.seams[0]
    s0, s1 = p.starts[:2]
    assert 1 - 1e-3 < wts[0, a - s0] < 1 and 0 < wts[0, b - 1 - s0] < 1e-3 and wts[0, b - s0] == 0
    assert 0 < wts[1, a - s1] < 1e-3 and wts[1, a - 1 - s1] == 0
    const = np.full((p.num_windows, p.window), 0.37, np.float32)
    for compensate in (True, False):
        np.testing.assert_allclose(overlap_add(const, p, compensate=compensate), 0.37, rtol=1e-6)


def _seam_level_db(y, p):
    """Level at the seam centres (±50 ms) relative to the middle of the first window, dB: [seams]."""
    e = np.mean(y**2, axis=0)
    ref = np.mean(e[: p.seams[0][0] - p.window // 4])
    return np.array([10 * np.log10(np.mean(e[(a + b) // 2 - 2400 : (a + b) // 2 + 2400]) / ref) for a, b in p.seams])


def test_compensation_keeps_the_level_of_uncorrelated_windows():
    n = 3 * S + 5000
    p = plan_windows(n)
    rng = np.random.default_rng(4)
    indep = rng.standard_normal((16, p.num_windows, p.window))  # every window its own noise: rho = 0
    plain, comp = (_seam_level_db(overlap_add(indep, p, compensate=c), p) for c in (False, True))
    assert np.all(np.abs(plain + 3.0) < 0.4)  # sin²/cos²: -3 dB at the centre
    assert np.all(np.abs(comp) < 0.4)
    # half shared, half independent: plain dips (rho = 0.5: -1.25 dB), compensated does not
    shared = cut_windows(rng.standard_normal((16, n)), p) + rng.standard_normal((16, p.num_windows, p.window))
    plain, comp = (_seam_level_db(overlap_add(shared, p, compensate=c), p) for c in (False, True))
    assert np.all(np.abs(plain + 1.25) < 0.4) and np.all(np.abs(comp) < 0.4)
    # a band shared and a band independent: only the independent band is raised
    lo_sos = signal.butter(8, 4000, fs=48000, output="sos")
    low = signal.sosfiltfilt(lo_sos, rng.standard_normal((4, n)))
    high = indep[:4] - signal.sosfiltfilt(lo_sos, indep[:4])
    y = overlap_add(cut_windows(low, p) + high, p)
    y_low = signal.sosfiltfilt(lo_sos, y)
    np.testing.assert_allclose(_seam_level_db(y_low, p), _seam_level_db(low, p), atol=0.2)
    assert np.all(np.abs(_seam_level_db(y - y_low, p)) < 0.5)
    # short fades are left plain
    short = plan_windows(n, fade=1000)
    np.testing.assert_array_equal(overlap_add(indep[:2], short), overlap_add(indep[:2], short, compensate=False))


def test_seam_flux_detects_a_hard_splice_but_not_a_cross_fade():
    sr, n = 48000, 20 * 48000
    rng = np.random.default_rng(3)
    lo = signal.sosfilt(signal.butter(6, 4000, fs=sr, output="sos"), rng.standard_normal(n))
    hi = signal.sosfilt(signal.butter(6, 4000, "high", fs=sr, output="sos"), rng.standard_normal(n))
    lo, hi = lo + 0.01 * rng.standard_normal(n), hi + 0.01 * rng.standard_normal(n)
    results = {}
    for fade in (0, OV):
        p = plan_windows(n, fade=fade)
        w = np.stack([(lo if i % 2 == 0 else hi)[s : s + p.window] for i, s in enumerate(p.starts)])
        results[fade] = windows.seam_flux(overlap_add(w, p), p)
        assert results[fade]["seams"] == p.num_windows - 1 == 2
    hard, faded = results[0], results[OV]
    assert hard["ratio"] > 3 and hard["tail_ratio"] > 3 and hard["seam_rank"] > 0.99
    assert 0.9 < faded["ratio"] < 1.1 and 0.9 < faded["tail_ratio"] < 1.15 and faded["seam_rank"] < 0.65
    # a signal without seams, measured at the same frames, is unremarkable; one window has no seams
    clean = windows.seam_flux(lo + hi, plan_windows(n))
    assert 0.9 < clean["ratio"] < 1.1
    single = windows.seam_flux(lo[: S], plan_windows(S))
    assert single["seams"] == 0 and np.isnan(single["ratio"])
