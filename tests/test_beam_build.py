"""The dataset build as a Beam pipeline, and what came with it: one decode per file, the streamable split rule,
manifests, the per-example bandwidth and the LDM loss mask above it.

The Beam builds run the DirectRunner (two worker processes where a worker is killed) on the real corpus slice
plus synthetic bad files, with 1 s segments.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosr_jax.data import beam as beam_build
from audiosr_jax.data.manifest import ManifestError, read_manifest
from audiosr_jax.data.segments import (
    DOMAINS,
    DatasetError,
    SegmentConfig,
    build_dataset,
    open_split,
    read_build_report,
)
from audiosr_jax.data.splits import SplitRouter, assign_splits

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "fixtures" / "corpus_slice"
SR = 48000
SEG1 = SegmentConfig(segment_seconds=1.0)
TWO_WORKERS = "--direct_num_workers=2 --direct_running_mode=multi_processing"
IN_PROCESS = "--direct_running_mode=in_memory"


def noise(seconds, level=0.1, seed=0, sr=SR, channels=None, cutoff=None):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    x = level * rng.standard_normal(n if channels is None else (n, channels))
    if cutoff is not None:  # brick-wall band limit
        spec = np.fft.rfft(x, axis=0)
        spec[np.fft.rfftfreq(n, 1 / sr) > cutoff] = 0
        x = np.fft.irfft(spec, n, axis=0)
    return x.astype(np.float32)


def corpus_with_bad_files(root: Path) -> dict:
    """The six slice clips plus one file of each bad kind (spread over the domains)."""
    for d in ("music", "speech", "effects"):
        shutil.copytree(SLICE / d, root / d)
    data = (SLICE / "speech" / "tuxpaint-es_0001.flac").read_bytes()
    (root / "speech" / "corrupt.flac").write_bytes(data[: len(data) // 2])
    (root / "speech" / "empty.wav").write_bytes(b"")
    x = noise(2.0, seed=6)
    x[1000] = np.nan
    sf.write(root / "music" / "nan.wav", x, SR, subtype="FLOAT")
    sf.write(root / "effects" / "silent.wav", np.zeros(SR, np.float32), SR, subtype="FLOAT")
    sf.write(root / "effects" / "ch32.wav", noise(1.5, channels=32, seed=8), SR, subtype="PCM_16")
    (root / "music" / "unreadable.wav").write_text("RIFF but not really")
    return {d: [root / d] for d in ("music", "speech", "effects")}


BAD = {"speech/corrupt.flac": "corrupt", "speech/empty.wav": "0 bytes", "music/nan.wav": "NaN",
       "effects/silent.wav": "silent", "effects/ch32.wav": "32 channels",
       "music/unreadable.wav": "not a readable audio file"}


def examples_by_key(version_dir) -> dict:
    """{split: {(source, channel, offset): {feature: bytes}}} of a build."""
    info = json.loads((Path(version_dir) / "dataset_info.json").read_text())
    out = {}
    for split in (s["name"] for s in info["splits"]):
        src = open_split(version_dir, split)
        recs = [src[i] for i in range(len(src))]
        out[split] = {(r["source"], int(r["channel"]), int(r["offset"])): {k: np.asarray(v).tobytes()
                                                                            for k, v in r.items()} for r in recs}
    return out


def split_counts(version_dir) -> dict:
    info = json.loads((Path(version_dir) / "dataset_info.json").read_text())
    return {s["name"]: (sum(int(n) for n in s["shardLengths"]), s["numBytes"]) for s in info["splits"]}


def assert_same_dataset(a, b):
    assert examples_by_key(a) == examples_by_key(b)
    assert split_counts(a) == split_counts(b)
    assert read_build_report(a) == read_build_report(b)
    for name in sorted(os.listdir(a)):  # one shard per split here: even the files are identical
        if ".array_record" in name or name in ("features.json", "dataset_info.json"):
            assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------------------
# Beam == single process, with bad files, and a worker that dies


def test_beam_build_is_the_single_process_build_and_a_dead_worker_loses_nothing(tmp_path, monkeypatch):
    sources = corpus_with_bad_files(tmp_path / "corpus")
    single = build_dataset(sources, tmp_path / "single", config=SEG1)

    # a worker process dies while it decodes one file: the DirectRunner fails the pipeline (it does not
    # retry bundles), and the build leaves nothing behind
    marker = tmp_path / "killed"
    monkeypatch.setenv(beam_build.KILL_ENV, f"music/bwv10_7_bpm87.flac={marker}")
    with pytest.raises(Exception):
        build_dataset(sources, tmp_path / "beam", config=SEG1, beam_options=TWO_WORKERS)
    assert int(marker.read_text()) != os.getpid()  # it was a worker process, not this one
    assert not (tmp_path / "beam").exists()

    # the rerun (the marker says the kill happened) gives the single-process dataset
    beam = build_dataset(sources, tmp_path / "beam", config=SEG1, beam_options=TWO_WORKERS)
    assert_same_dataset(single, beam)
    rep = read_build_report(beam)
    assert {s["source"]: s["reason"] for s in rep["skipped"]}.keys() == BAD.keys()
    for s in rep["skipped"]:
        assert BAD[s["source"]] in s["reason"], s
    assert (rep["files_seen"], rep["files_used"], rep["files_skipped"]) == (12, 6, 6)
    assert sum(rep["segments"].values()) == 18 and set(rep["segments"]) == {"train", "validation"}


def test_beam_build_with_fewer_than_two_productive_files(tmp_path, caplog):
    # two inputs, one gives segments: the validation split cannot be filled; the pipeline runs again with
    # train only, as the single-process build writes it
    src = tmp_path / "m"
    src.mkdir()
    shutil.copy(SLICE / "music" / "bwv10_7_bpm87.flac", src / "good.flac")
    sf.write(src / "quiet.wav", noise(2.0, level=1e-5), SR, subtype="FLOAT")  # every segment silent
    single = build_dataset({"music": [src]}, tmp_path / "single", config=SEG1)
    caplog.set_level("WARNING", logger="audiosr_jax.data.segments")
    beam = build_dataset({"music": [src]}, tmp_path / "beam", config=SEG1, beam_options=IN_PROCESS)
    assert "only split(s) train got files: running the pipeline again" in caplog.text
    assert read_build_report(beam)["segments"] == {"train": 3}
    assert_same_dataset(single, beam)
    # nothing usable at all: the single-process build's message
    (src / "good.flac").unlink()
    with pytest.raises(DatasetError, match="no segments written: every segment was silent"):
        build_dataset({"music": [src]}, tmp_path / "none", config=SEG1, beam_options=IN_PROCESS)
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------------------------------------
# the split rule, streamed


def test_split_router_streams_the_split_rule_holding_two_files_at_most():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 12))
        names = [f"speech/{trial}_{i}.wav" for i in range(n)]
        fraction = float(rng.choice([0.0, 0.05, 0.1, 0.5, 0.9]))
        want, notes = assign_splits(names, fraction)
        router, got, most_held = SplitRouter(fraction), {}, 0
        for name in rng.permutation(names):
            for split, item in router.feed(str(name), [name]):
                got[item] = split
            most_held = max(most_held, len(router._held))
        for split, item in router.finish():
            got[item] = split
        assert got == want and list(router.decision.notes) == notes and most_held <= 2
        assert set(router.decision.splits) == set(want.values())
        if fraction > 0 and n >= 2:
            assert set(want.values()) == {"train", "validation"}


# ----------------------------------------------------------------------------------------------------------
# manifests and the stored bandwidth


def _manifest_corpus(root: Path):
    (root / "music").mkdir(parents=True)
    shutil.copy(SLICE / "music" / "bwv10_7_bpm87.flac", root / "music" / "a.flac")
    shutil.copy(SLICE / "music" / "bwv104_6_bpm118.flac", root / "music" / "b.flac")
    (root / "sfx").mkdir()
    sf.write(root / "sfx" / "dull.wav", noise(2.0, seed=3, cutoff=6000.0), SR, subtype="FLOAT")
    return [
        {"path": "music/a.flac", "domain": "music", "licence": "BSD-3-Clause"},
        {"path": str(root / "music" / "b.flac"), "domain": "music", "licence": "MIT", "bandwidth_hz": 8000},
        {"path": "sfx/dull.wav", "domain": "effects", "licence": "CC0-1.0"},
    ]


def test_manifest_build_stores_bandwidth_and_licence(tmp_path):
    rows = _manifest_corpus(tmp_path / "c")
    csv_path = tmp_path / "c" / "files.csv"
    csv_path.write_text("path,domain,licence,bandwidth_hz\n" + "".join(
        f"{r['path']},{r['domain']},{r['licence']},{r.get('bandwidth_hz', '')}\n" for r in rows))
    jsonl_path = tmp_path / "c" / "files.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = SegmentConfig(segment_seconds=1.0, validation_fraction=0.0)
    v = build_dataset(None, tmp_path / "d", config=cfg, manifests=[csv_path])
    by_source = {}
    for e in open_split(v, "train"):
        by_source.setdefault(e["source"].decode(), set()).add(float(e["bandwidth_hz"]))
    assert sorted(by_source) == ["effects/sfx/dull.wav", "music/a.flac", "music/b.flac"]
    assert all(len(bws) == 1 for bws in by_source.values())  # one value per file, on each of its examples
    assert abs(by_source["effects/sfx/dull.wav"].pop() - 6000) < 250  # measured (60 dB rule)
    assert by_source["music/b.flac"].pop() == 8000  # declared below the measured: the lower one
    assert by_source["music/a.flac"].pop() > 12_000
    files = {f["source"]: f for f in read_build_report(v)["files"]}
    assert files["music/a.flac"]["licence"] == "BSD-3-Clause" and "declared_bandwidth_hz" not in files["music/a.flac"]
    assert files["music/b.flac"]["declared_bandwidth_hz"] == 8000
    assert files["music/b.flac"]["measured_bandwidth_hz"] > 8000
    assert read_build_report(v)["inputs"] == [{"manifest": str(csv_path)}]
    # the same rows as JSON Lines: the same examples
    w = build_dataset([], tmp_path / "e", config=cfg, manifests=[jsonl_path])
    assert examples_by_key(w) == examples_by_key(v)


def test_manifest_rows_are_checked(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,domain\na.wav,music\nb.wav,podcasts\n")
    with pytest.raises(ManifestError, match=r"m.csv: row 2: unknown domain 'podcasts'"):
        read_manifest(m, DOMAINS)
    m.write_text("path,domain,bandwidth_hz\na.wav,music,wide\n")
    with pytest.raises(ManifestError, match="row 1: bandwidth 'wide' is not a number"):
        read_manifest(m, DOMAINS)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="a manifest is .csv, .jsonl or .json"):
        read_manifest(tmp_path / "m.txt", DOMAINS)
    with pytest.raises(DatasetError, match="cannot read the manifest"):
        build_dataset(None, tmp_path / "d", config=SEG1, manifests=[tmp_path / "missing.csv"])
    assert not (tmp_path / "d").exists()
    # the corpus builder's manifest.json, beside its domain folders: the names a --corpus build gives
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps({"clips": [
        {"path": "music/x.flac", "domain": "music", "licence": "MIT", "bandwidth_hz": 21000.0}]}))
    (row,) = read_manifest(tmp_path / "corpus" / "manifest.json", DOMAINS)
    assert (row.source, row.location, row.licence, row.bandwidth_hz) == (
        "music/x.flac", str(tmp_path / "corpus" / "music" / "x.flac"), "MIT", 21000.0)


# ----------------------------------------------------------------------------------------------------------
# the LDM loss above each clip's bandwidth


def test_ldm_loss_ignores_latent_rows_above_the_clip_bandwidth(monkeypatch):
    import jax
    import jax.numpy as jnp

    from audiosr_jax.configs import ldm as ldm_config
    from audiosr_jax.diffusion import objectives
    from audiosr_jax.training.ldm import (
        LDMStage,
        latent_band_mask,
        masked_diffusion_loss,
    )
    from audiosr_jax.training.weights import architectures

    c = ldm_config.get_config("tiny")
    vae_cfg, unet_cfg, _ = architectures(c.model)
    b, frames, rows, ch = 2, 4, 256 // vae_cfg.downsample_factor, unet_cfg.in_channels // 2
    z = jax.random.normal(jax.random.PRNGKey(1), (b, frames, rows, ch))
    bandwidth = jnp.array([8000.0, 24000.0])
    mask = latent_band_mask(bandwidth, rows)
    assert 0 < int(mask[0].sum()) < rows and int(mask[1].sum()) == rows
    above = (1.0 - mask) * 100.0  # a different target everywhere above clip 0's bandwidth
    below = mask * (jnp.arange(b) == 0)[:, None, None, None]

    class ZeroUNet:  # the prediction does not depend on the input: only the target moves the loss
        def apply(self, variables, x, t):
            return jnp.zeros(x.shape[:-1] + (ch,), x.dtype)

    jitted = {}

    def loss_for(stage, target, with_bandwidth=True):
        # the target latent comes in through the batch, so one compiled loss per stage serves every target
        if stage not in jitted:
            monkeypatch.setattr(stage, "latents", lambda vae, batch, key, sf: (batch["z"], jnp.zeros_like(batch["z"])))
            monkeypatch.setattr(stage, "unet", ZeroUNet())
            jitted[stage] = jax.jit(stage.loss)
        batch = {"audio": jnp.zeros((b, 15_360)), "z": target}
        if with_bandwidth:
            batch["bandwidth_hz"] = bandwidth
        frozen = {"vae": None, "scale_factor": jnp.float32(1.0)}
        return float(jitted[stage]({"unet": {}}, frozen, batch, jax.random.PRNGKey(2))[0])

    stage = LDMStage(c, vae_cfg, unet_cfg)
    assert stage.mask_above_bandwidth  # on by default
    base = loss_for(stage, z)
    assert loss_for(stage, z + above) == pytest.approx(base, rel=1e-6)
    assert loss_for(stage, z + below) != pytest.approx(base, rel=1e-3)  # below the bandwidth it counts
    assert loss_for(stage, z + above, with_bandwidth=False) != pytest.approx(base, rel=1e-3)
    c.ldm.mask_above_bandwidth = False
    off = LDMStage(c, vae_cfg, unet_cfg)
    assert loss_for(off, z + above) != pytest.approx(loss_for(off, z), rel=1e-3)
    # a full-band batch: the masked loss is the plain one
    a = jnp.array([0.3, 0.7])
    pred, eps = jnp.ones_like(z), jnp.zeros_like(z)
    full = latent_band_mask(jnp.array([24000.0, 24000.0]), rows)
    assert float(masked_diffusion_loss(pred, z, eps, a, full)) == pytest.approx(
        float(objectives.diffusion_loss(pred, z, eps, a)), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------
# the object-store build (Dataflow writes to gs://): staged, swapped object by object; run on a local folder


def test_object_store_build_stages_and_swaps_object_by_object(tmp_path):
    from etils import epath

    from audiosr_jax.data import object_store
    from audiosr_jax.data.segments import AudioSegments, builder_config_for

    bc = builder_config_for(SEG1)
    rel = f"audio_segments/{bc.name}/1.0.0"
    local = build_dataset({"music": [SLICE / "music"]}, tmp_path / "local", config=SEG1)

    def factory(sources):
        return lambda staging: AudioSegments(sources=sources, data_dir=os.fspath(staging), config=bc)

    def prepare(builder, staging):
        import tensorflow_datasets as tfds

        builder.download_and_prepare(download_dir=os.fspath(staging / "downloads"), download_config=(
            tfds.download.DownloadConfig(try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP)))

    root = epath.Path(tmp_path / "store")
    v = object_store.build(factory({"music": [SLICE / "music"]}), root, rel, "audio_segments", False, prepare)
    assert examples_by_key(v) == examples_by_key(local) and read_build_report(v) == read_build_report(local)
    assert sorted(p.name for p in root.iterdir()) == ["audio_segments"]  # no staging prefix left
    with pytest.raises(DatasetError, match="already exists"):
        object_store.build(factory({"music": [SLICE / "music"]}), root, rel, "audio_segments", False, prepare)

    def failing(builder, staging):
        prepare(builder, staging)
        raise RuntimeError("worker pool gone")

    def snapshot():
        store = tmp_path / "store"
        return {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()}

    before = snapshot()
    with pytest.raises(RuntimeError):
        object_store.build(factory({"speech": [SLICE / "speech"]}), root, rel, "audio_segments", True, failing)
    assert snapshot() == before
    object_store.build(factory({"speech": [SLICE / "speech"]}), root, rel, "audio_segments", True, prepare)
    assert {s.split(b"/")[0] for s, _, _ in examples_by_key(v)["train"]} == {b"speech"}
    # without Beam, a remote data_dir is still refused with one line
    with pytest.raises(DatasetError, match="built on the local disk"):
        build_dataset({"music": [SLICE / "music"]}, "gs://bucket/tfds", config=SEG1)


def test_cli_manifest_and_beam_flags(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_build_cli_beam", REPO / "data" / "build.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rows = _manifest_corpus(tmp_path / "c")
    m = tmp_path / "c" / "files.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--quiet", "--segment_seconds", "1.0", "--validation_fraction", "0", "--manifest", str(m)]
    assert cli.main([*common, "--data_dir", str(tmp_path / "one")]) == 0
    assert cli.main([*common, "--data_dir", str(tmp_path / "beam"), "--beam", f"--beam_options={IN_PROCESS}"]) == 0
    one, beam = (tmp_path / d / "audio_segments" for d in ("one", "beam"))
    (v1,), (v2,) = (list(p.glob("*/1.0.0")) for p in (one, beam))
    assert_same_dataset(v1, v2)
    assert cli.main([*common, "--data_dir", str(tmp_path / "x"), f"--beam_options={IN_PROCESS}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --beam_options needs --beam"
