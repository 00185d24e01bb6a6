"""The training loader (audiosr_jax.data.loader) over small in-memory sources, and over a built TFDS
dataset when audiosr_jax.data.segments and its fixture are present. 8 fake CPU devices (conftest)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from audiosr_jax import degrade as D
from audiosr_jax.data.loader import LoaderConfig, crop_offset, make_loader

SEG = 24000  # 0.5 s segments keep the host low-pass cheap
CROP = 4800


def _source(n: int = 24, seg: int = SEG, seed: int = 0, short_every: int = 0) -> list[dict]:
    """In-memory records with the data_spec keys; every ``short_every``-th one is zero-padded after 40 %."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = np.clip(rng.standard_normal(seg) * 4000, -32767, 32767).astype(np.int16)
        x[x == 0] = 1  # no exact zeros in real samples: padding is then recognisable
        valid = seg
        if short_every and i % short_every == 0:
            valid = int(0.4 * seg)
            x[valid:] = 0
        out.append({"audio": x, "valid_samples": np.int32(valid), "source": f"music/{i}.wav",
                    "offset": np.int64(0), "domain": np.int64(1), "orig_sample_rate": np.int32(48000),
                    "channel": np.int32(-1)})
    return out


@pytest.fixture(scope="module")
def mesh8():
    return jax.make_mesh((8,), ("data",))


@pytest.fixture(scope="module")
def mesh24():
    return jax.make_mesh((2, 4), ("data", "fsdp"))


def _cfg(**kw) -> LoaderConfig:
    base = dict(global_batch_size=8, crop_samples=CROP, seed=3, lowpass="none")
    base.update(kw)
    return LoaderConfig(**base)


def _np(batch):
    return jax.tree.map(np.asarray, batch)


def _take(loader, k):
    return [_np(next(loader)) for _ in range(k)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        jax.tree.map(np.testing.assert_array_equal, x, y)


# ----------------------------------------------------------------------------------------------------------
# shapes, dtypes, shardings
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lowpass", ["host", "device", "device_stft", "none"])
def test_shapes_dtypes_sharding_mesh8(mesh8, lowpass):
    src = _source(16)
    batch = next(make_loader(src, _cfg(lowpass=lowpass), mesh8))
    want = {"audio": ((8, CROP), jnp.float32), "cutoff_hz": ((8,), jnp.float32), "index": ((8,), jnp.int32),
            "epoch": ((8,), jnp.int32)}
    if lowpass == "host":
        want["lowpass"] = ((8, CROP), jnp.float32)
    if lowpass in ("device", "device_stft"):
        want["lowpass_params"] = {"sos": ((8, 5, 6), jnp.float32), "fc": ((8,), jnp.float32),
                                  "t_win": ((8,), jnp.float32), "fs_down": ((8,), jnp.float32)}
    assert jax.tree.map(lambda a: (a.shape, a.dtype), batch) == want
    for leaf in jax.tree.leaves(batch):
        assert isinstance(leaf, jax.Array)
        assert leaf.sharding.spec == P("data")
        assert len(leaf.addressable_shards) == 8 and leaf.addressable_shards[0].data.shape[0] == 1
    a = np.asarray(batch["audio"])
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.05
    idx = np.asarray(batch["index"])
    assert len(set(idx.tolist())) == 8 and idx.min() >= 0 and idx.max() < 16
    np.testing.assert_array_equal(np.asarray(batch["epoch"]), 0)
    if lowpass == "none":
        np.testing.assert_array_equal(np.asarray(batch["cutoff_hz"]), 24000.0)
    else:
        c = np.asarray(batch["cutoff_hz"])
        assert (c >= 2000).all() and (c <= 16000).all()


def test_sharding_mesh_2x4_two_batch_axes(mesh24):
    batch = next(make_loader(_source(16), _cfg(lowpass="device"), mesh24, batch_axes=("data", "fsdp")))
    for leaf in jax.tree.leaves(batch):
        assert leaf.sharding.spec == P(("data", "fsdp"))
        assert leaf.addressable_shards[0].data.shape[0] == 1
    # one batch axis of the 2x4 mesh: 2 shards of 4, replicated along fsdp
    batch = next(make_loader(_source(16), _cfg(), mesh24, batch_axes=("data",)))
    assert batch["audio"].sharding.spec == P("data")
    assert batch["audio"].addressable_shards[0].data.shape == (4, CROP)


def test_batch_not_dividing_devices_raises(mesh8, mesh24):
    with pytest.raises(ValueError, match=r"global_batch_size 12 .* 8 devices") as e:
        make_loader(_source(16), _cfg(global_batch_size=12), mesh8)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"global_batch_size 6 .* 8 devices"):
        make_loader(_source(16), _cfg(global_batch_size=6), mesh24, batch_axes=("data", "fsdp"))
    make_loader(_source(16), _cfg(global_batch_size=6), mesh24, batch_axes=("data",))  # 6 % 2 == 0


def test_empty_source_and_long_crop_raise(mesh8):
    with pytest.raises(ValueError, match="empty"):
        make_loader([], _cfg(), mesh8)
    with pytest.raises(ValueError, match=rf"crop_samples {SEG + 1} is longer .*\({SEG} samples\)"):
        make_loader(_source(8), _cfg(crop_samples=SEG + 1), mesh8)
    with pytest.raises(ValueError, match="lowpass"):
        _cfg(lowpass="gpu")


# ----------------------------------------------------------------------------------------------------------
# determinism, epochs, hosts, crops
# ----------------------------------------------------------------------------------------------------------


def test_device_stft_batches_equal_device_batches(mesh8):
    # the two modes differ only in the training step (degrade.log_mels_with_condition vs degrade_on_device)
    src = _source(16)
    _assert_batches_equal(_take(make_loader(src, _cfg(lowpass="device"), mesh8), 2),
                          _take(make_loader(src, _cfg(lowpass="device_stft"), mesh8), 2))


def test_deterministic_per_seed(mesh8):
    src = _source(24)
    a = _take(make_loader(src, _cfg(lowpass="device"), mesh8), 4)
    b = _take(make_loader(src, _cfg(lowpass="device"), mesh8), 4)
    _assert_batches_equal(a, b)
    c = _take(make_loader(src, _cfg(lowpass="device", seed=4), mesh8), 4)
    assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
    assert not np.array_equal(a[0]["audio"], c[0]["audio"])
    assert not np.array_equal(a[0]["cutoff_hz"], c[0]["cutoff_hz"])


def test_draws_depend_only_on_seed_epoch_index(mesh8):
    """The same record in the same epoch gets the same crop and low-pass whatever its position."""
    src = _source(16)
    shuffled = _np(next(make_loader(src, _cfg(global_batch_size=16, lowpass="device"), mesh8)))
    ordered = _np(next(make_loader(src, _cfg(global_batch_size=16, lowpass="device", shuffle=False), mesh8)))
    np.testing.assert_array_equal(ordered["index"], np.arange(16))
    perm = shuffled["index"]
    assert not np.array_equal(perm, np.arange(16))
    jax.tree.map(lambda s, o: np.testing.assert_array_equal(s, o[perm]), shuffled, ordered)
    for i in range(16):
        assert ordered["cutoff_hz"][i] == D.draw_spec(D.DegradeConfig(), 3, 0, i).cutoff_hz


def test_epochs_floor_and_reshuffle(mesh8):
    """num_epochs=E yields floor(E * len / global) batches; each epoch is a new permutation."""
    src = _source(20)
    one = _take(make_loader(src, _cfg(num_epochs=1), mesh8), 2)
    assert make_loader(src, _cfg(num_epochs=1), mesh8).num_batches == 2
    assert len(list(make_loader(src, _cfg(num_epochs=1), mesh8))) == 2  # 20 // 8, 4 records dropped
    assert len(set(np.concatenate([b["index"] for b in one]).tolist())) == 16
    loader = make_loader(src, _cfg(num_epochs=2, lowpass="device"), mesh8)
    batches = [_np(b) for b in loader]
    assert len(batches) == 5 and loader.num_batches == 5  # 40 // 8, straddling the epoch end
    idx = np.concatenate([b["index"] for b in batches])
    ep = np.concatenate([b["epoch"] for b in batches])
    np.testing.assert_array_equal(ep, np.repeat([0, 1], 20))
    assert sorted(idx[:20].tolist()) == list(range(20)) and sorted(idx[20:].tolist()) == list(range(20))
    assert not np.array_equal(idx[:20], idx[20:])
    # a record's draw in epoch 1 differs from epoch 0 (fresh crop and low-pass)
    cut = np.concatenate([b["cutoff_hz"] for b in batches])
    c0 = dict(zip(idx[:20].tolist(), cut[:20].tolist()))
    c1 = dict(zip(idx[20:].tolist(), cut[20:].tolist()))
    assert sum(c0[i] != c1[i] for i in range(20)) >= 15
    with pytest.raises(ValueError, match="make no global batch"):
        make_loader(src[:5], _cfg(num_epochs=1), mesh8)


@pytest.mark.parametrize("count", [2, 4])
def test_per_host_split_disjoint_and_covering(mesh8, count):
    src = _source(20)
    cfg = _cfg(num_epochs=1)
    full = [b["index"] for b in make_loader(src, cfg, mesh8)]  # 2 global batches of 8
    per_host = []
    for i in range(count):
        loader = make_loader(src, cfg, mesh8, process_index=i, process_count=count)
        assert loader.local_batch_size == 8 // count
        got = []
        while True:
            try:
                got.append(loader.next_local()["index"])
            except StopIteration:
                break
        assert len(got) == 2  # every host runs the same number of steps
        per_host.append(got)
    for s in range(2):
        rows = np.concatenate([h[s] for h in per_host])  # the hosts' rows in process order
        assert len(set(rows.tolist())) == 8
        np.testing.assert_array_equal(rows, np.asarray(full[s]))  # the same global batch, row for row
    sets = [set(np.concatenate(h).tolist()) for h in per_host]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 16  # disjoint; cover the epoch's 2 batches
    with pytest.raises(RuntimeError, match="simulated"):
        next(make_loader(src, cfg, mesh8, process_index=0, process_count=2))


def test_crops_stay_in_valid_samples(mesh8):
    src = _source(16, short_every=2)  # even records: 9600 valid samples of 24000
    for frac, min_valid in [(1.0, CROP), (0.5, CROP // 2)]:
        for b in make_loader(src, _cfg(global_batch_size=16, min_valid_fraction=frac, num_epochs=3), mesh8):
            nonzero = (np.asarray(b["audio"]) != 0).sum(axis=1)
            assert (nonzero >= min_valid).all()
    # segment shorter than the crop's valid need: offset 0 (all of the valid samples)
    rng = np.random.default_rng(0)
    assert all(crop_offset(rng, 24000, 100, 4800, 0.5) == 0 for _ in range(20))
    offs = [crop_offset(rng, 24000, 24000, 4800, 1.0) for _ in range(200)]
    assert min(offs) >= 0 and max(offs) <= 19200 and max(offs) > 15000


# ----------------------------------------------------------------------------------------------------------
# low-pass: host pair and device parameters
# ----------------------------------------------------------------------------------------------------------


def test_host_lowpass_equals_make_pair(mesh8):
    cfg = _cfg(lowpass="host")
    b = _np(next(make_loader(_source(16), cfg, mesh8)))
    dcfg = cfg.degrade_config()
    for i in range(8):
        low, spec = D.make_pair(b["audio"][i], dcfg, cfg.seed, int(b["epoch"][i]), int(b["index"][i]))
        np.testing.assert_array_equal(b["lowpass"][i], low)
        assert b["cutoff_hz"][i] == np.float32(spec.cutoff_hz)


def test_device_params_match_host_in_pass_band(mesh8):
    crop = 16384
    src = _source(8, seg=crop + 2000, seed=1)
    host = _np(next(make_loader(src, _cfg(lowpass="host", crop_samples=crop), mesh8)))
    dev = _np(next(make_loader(src, _cfg(lowpass="device", crop_samples=crop), mesh8)))
    for k in ("audio", "index", "epoch", "cutoff_hz"):
        np.testing.assert_array_equal(host[k], dev[k])
    y = np.asarray(D.degrade_on_device(jnp.asarray(dev["audio"]), dev["lowpass_params"]))
    f = np.fft.rfftfreq(crop, 1 / 48000)
    for i in range(8):
        ph = np.abs(np.fft.rfft(host["lowpass"][i])) ** 2
        pd = np.abs(np.fft.rfft(y[i])) ** 2
        edges = np.geomspace(100, 0.9 * host["cutoff_hz"][i], 12)
        for lo, hi in zip(edges[:-1], edges[1:]):
            band = (f >= lo) & (f < hi)
            assert abs(10 * np.log10(ph[band].sum() / pd[band].sum())) < 1.0
        mid = slice(3000, crop - 3000)  # away from the clip edges (circular vs sosfiltfilt padding)
        err = np.linalg.norm(host["lowpass"][i][mid] - y[i][mid]) / np.linalg.norm(host["lowpass"][i][mid])
        assert err < 0.2


# ----------------------------------------------------------------------------------------------------------
# resume through orbax
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lowpass", ["host", "device"])
def test_resume_through_orbax_equals_uninterrupted(mesh8, tmp_path, lowpass):
    import orbax.checkpoint as ocp

    src = _source(12)
    cfg = _cfg(lowpass=lowpass, global_batch_size=8, worker_count=0)  # 12 records: batches straddle epochs
    k, m = 3, 3
    expected = _take(make_loader(src, cfg, mesh8), k + m)

    first = make_loader(src, cfg, mesh8)
    _assert_batches_equal(_take(first, k), expected[:k])
    state = {"w": jnp.arange(4.0), "step": jnp.asarray(k)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
        mgr.save(k, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data_iter=first.checkpoint_args()))
        mgr.wait_until_finished()
    _take(first, 2)  # the first run goes on; the checkpoint must not follow it

    fresh = make_loader(src, cfg, mesh8)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
        assert mgr.latest_step() == k
        restored = mgr.restore(k, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.tree.map(np.zeros_like, state)),
            data_iter=fresh.restore_args()))
    np.testing.assert_array_equal(restored["state"]["w"], np.arange(4.0))
    _assert_batches_equal(_take(fresh, m), expected[k:])
    assert int(expected[k + m - 1]["epoch"].max()) >= 1


def test_get_set_state_roundtrip(mesh8):
    import json

    src = _source(12)
    cfg = _cfg(lowpass="device")
    a = make_loader(src, cfg, mesh8)
    _take(a, 2)
    state = json.loads(json.dumps(a.get_state()))
    want = _take(a, 2)
    b = make_loader(src, cfg, mesh8)
    b.set_state(state)
    _assert_batches_equal(_take(b, 2), want)


# ----------------------------------------------------------------------------------------------------------
# a real built dataset (when the TFDS builder and its fixture are in the tree)
# ----------------------------------------------------------------------------------------------------------


FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "corpus_slice"


@pytest.fixture(scope="module")
def built_dataset(tmp_path_factory):
    from audiosr_jax.data import segments  # an import error is a failure, never a skip

    assert FIXTURE.is_dir(), "tests/fixtures/corpus_slice is missing from the checkout"
    sources = [(d.name, d) for d in sorted(FIXTURE.iterdir()) if d.is_dir()]
    assert sources, "tests/fixtures/corpus_slice has no domain folders"
    version_dir = segments.build_dataset(sources, tmp_path_factory.mktemp("tfds"))
    return segments, version_dir


def test_real_dataset_batches_and_resume(mesh8, built_dataset, tmp_path):
    segments, version_dir = built_dataset
    src = segments.open_split(version_dir, "train")
    n = len(src)
    seg = np.asarray(src[0]["audio"]).shape[-1]
    cfg = LoaderConfig(global_batch_size=8, crop_samples=min(15360, seg), lowpass="device", seed=1)
    expected = _take(make_loader(src, cfg, mesh8), 4)
    b = expected[0]
    assert b["audio"].shape == (8, cfg.crop_samples) and b["audio"].dtype == np.float32
    assert np.abs(b["audio"]).max() > 0 and (b["index"] < n).all()
    rec = src[int(b["index"][0])]
    assert rec["audio"].dtype == np.int16  # the loader scales it to [-1, 1)
    # each row's measured bandwidth (the LDM's loss mask) is its record's
    assert b["bandwidth_hz"].dtype == np.float32
    np.testing.assert_array_equal(b["bandwidth_hz"], [np.float32(src[int(i)]["bandwidth_hz"]) for i in b["index"]])
    assert 0 < b["bandwidth_hz"].min() <= b["bandwidth_hz"].max() <= 24000
    loader = make_loader(src, cfg, mesh8)
    _take(loader, 2)
    state = loader.get_state()
    fresh = make_loader(segments.open_split(version_dir, "train"), cfg, mesh8)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 2), expected[2:])
