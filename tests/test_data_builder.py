"""The TFDS ``audio_segments`` builder: format, values, determinism, splits, silence, tails, channels, bad data.

Builds from the real corpus slice in ``tests/fixtures/corpus_slice`` (six 3 s clips, 48 kHz mono FLAC 16-bit) and
from files made in ``tmp_path``. Short segments (1 s) keep every build well under a second.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosr_jax.data.segments import (
    DOMAINS,
    REPORT_NAME,
    AudioSegments,
    DatasetError,
    SegmentConfig,
    assign_splits,
    build_dataset,
    open_split,
    read_build_report,
)
from audiosr_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "fixtures" / "corpus_slice"
SR = 48000
SEG1 = SegmentConfig(segment_seconds=1.0)


def slice_sources():
    return {d: [SLICE / d] for d in ("music", "speech", "effects")}


def all_examples(version_dir, split):
    src = open_split(version_dir, split)
    return [src[i] for i in range(len(src))]


def noise(seconds, level=0.1, seed=0, sr=SR, channels=None):
    rng = np.random.default_rng(seed)
    shape = (int(round(seconds * sr)),) if channels is None else (int(round(seconds * sr)), channels)
    return (level * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(slice_sources(), tmp_path_factory.mktemp("tfds"), config=SEG1)


# ----------------------------------------------------------------------------------------------------------
# format and values


def test_fixture_slice_layout():
    files = sorted(p.relative_to(SLICE).as_posix() for p in SLICE.rglob("*.flac"))
    assert len(files) == 6 and {f.split("/")[0] for f in files} == {"music", "speech", "effects"}
    assert sum((SLICE / f).stat().st_size for f in files) < 1.5e6
    for f in files:
        info = sf.info(str(SLICE / f))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert 2.5 <= info.duration <= 3.5
        assert f"`{f}`" in (SLICE / "SOURCES.md").read_text()


def test_layout_shapes_dtypes_metadata(built):
    assert built.parts[-3:] == ("audio_segments", "seg1000ms_pad_mix", "1.0.0")
    names = sorted(os.listdir(built))
    assert {"features.json", "dataset_info.json", "build_report.json"} <= set(names)
    assert any(n.startswith("audio_segments-train.array_record") for n in names)
    assert any(n.startswith("audio_segments-validation.array_record") for n in names)
    rep = read_build_report(built)
    total = 0
    for split in ("train", "validation"):
        exs = all_examples(built, split)
        assert len(exs) == rep["segments"][split] > 0
        total += len(exs)
        for ex in exs:
            assert set(ex) == {"audio", "valid_samples", "source", "offset", "domain", "orig_sample_rate", "channel",
                               "bandwidth_hz"}
            assert 12_000 < ex["bandwidth_hz"] <= SR / 2  # the slice is 48 kHz corpus audio (>= 12 kHz)
            assert ex["audio"].dtype == np.int16 and ex["audio"].shape == (SR,)
            assert ex["valid_samples"] == SR and ex["orig_sample_rate"] == SR and ex["channel"] == -1
            source = ex["source"].decode()
            assert DOMAINS[ex["domain"]] == source.split("/")[0]
            assert ex["offset"] in (0, SR, 2 * SR)
    # 6 files x 3 s = 18 one-second segments, none silent, no tail
    assert total == 18
    assert (rep["files_seen"], rep["files_used"], rep["files_skipped"]) == (6, 6, 0)
    assert rep["segments_dropped_silent"] == 0 and rep["tails_dropped"] == 0


def test_int16_round_trip_of_a_known_file(built):
    name = "music/bwv10_7_bpm87.flac"
    ref, sr = sf.read(str(SLICE / name), dtype="float64")
    exs = [e for s in ("train", "validation") for e in all_examples(built, s) if e["source"].decode() == name]
    assert sorted(int(e["offset"]) for e in exs) == [0, SR, 2 * SR]
    for e in exs:
        o = int(e["offset"])
        got = e["audio"].astype(np.float64) / 32767.0
        assert np.max(np.abs(got - ref[o:o + SR])) <= 1.0 / 32767 + 1e-9


def test_splits_are_disjoint_by_source_and_both_filled(built):
    rep = read_build_report(built)
    per_split = {s: {e["source"].decode() for e in all_examples(built, s)} for s in ("train", "validation")}
    assert per_split["train"] and per_split["validation"]
    assert not per_split["train"] & per_split["validation"]
    assert per_split["train"] | per_split["validation"] == {f["source"] for f in rep["files"]}
    for f in rep["files"]:
        assert f["source"] in per_split[f["split"]]


def test_assign_splits_stable_and_nonempty():
    names = [f"music/{i}.flac" for i in range(2)]
    split, notes = assign_splits(names, 0.1)
    assert sorted(split.values()) == ["train", "validation"]
    assert split == assign_splits(list(reversed(names)), 0.1)[0]  # order-independent
    many = [f"speech/{i:03d}.wav" for i in range(400)]
    split, notes = assign_splits(many, 0.25)
    frac = sum(v == "validation" for v in split.values()) / len(many)
    assert 0.18 < frac < 0.32 and not notes
    one, notes = assign_splits(["a/b.wav"], 0.1)
    assert one == {"a/b.wav": "train"} and "validation split is empty" in notes[0]


def test_segment_config_name_and_validation():
    assert SegmentConfig().name == "seg10240ms_pad_mix"
    assert SegmentConfig(segment_seconds=5.12, tail="drop", channels="split").name == "seg5120ms_drop_split"
    a = SegmentConfig(segment_seconds=1.0, silence_dbfs=-50)
    assert a.name == SegmentConfig(segment_seconds=1.0, silence_dbfs=-50).name != SEG1.name
    assert a.name.startswith("seg1000ms_pad_mix_")
    assert SegmentConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    for bad in (dict(tail="keep"), dict(channels="stereo"), dict(segment_seconds=0), dict(validation_fraction=1.0),
                dict(hop_seconds=0.0)):
        with pytest.raises(DatasetError, match="invalid segment config"):
            SegmentConfig(**bad)


def test_rebuild_is_byte_identical_across_processes(built, tmp_path):
    # A second build in a fresh process (the protobuf map order of tf.train.Example varies per process),
    # given absolute paths and a different data dir.
    cmd = [sys.executable, str(REPO / "data" / "build.py"), "--quiet", "--corpus", str(SLICE),
           "--data_dir", str(tmp_path / "again"), "--segment_seconds", "1.0", "--workers", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    again = tmp_path / "again" / "audio_segments" / "seg1000ms_pad_mix" / "1.0.0"
    assert str(again) in r.stdout
    names = sorted(n for n in os.listdir(built) if ".array_record" in n) + ["features.json", "dataset_info.json"]
    assert names == sorted(n for n in os.listdir(again) if ".array_record" in n) + names[-2:]
    for n in names:
        assert (built / n).read_bytes() == (again / n).read_bytes(), n


def test_spill_path_gives_the_same_bytes(built, tmp_path):
    # cache_bytes=0: every serialized example spills to the staging folder before it is written
    v = build_dataset(slice_sources(), tmp_path, config=SEG1, cache_bytes=0, workers=2)
    for n in sorted(os.listdir(built)):
        if ".array_record" in n:
            assert (built / n).read_bytes() == (v / n).read_bytes(), n


def test_existing_build_needs_overwrite(built, tmp_path):
    data_dir = built.parents[2]
    with pytest.raises(DatasetError, match="already exists"):
        build_dataset(slice_sources(), data_dir, config=SEG1)
    other = tmp_path / "o"
    v = build_dataset({"music": [SLICE / "music"]}, other, config=SEG1)
    v2 = build_dataset({"music": [SLICE / "music"], "speech": [SLICE / "speech"]}, other, config=SEG1,
                       overwrite=True)
    assert v2 == v and read_build_report(v)["files_seen"] == 4


# ----------------------------------------------------------------------------------------------------------
# --overwrite: the previous build stays intact until the new one is complete


def _tree(root):
    """Every file and folder under `root` (relative path -> bytes, None for a folder): a byte-exact snapshot."""
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
            for p in sorted(Path(root).rglob("*"))}


def _build_cli(*args):
    """Run ``data/build.py``'s main in-process (same code path as the command line); returns its exit status."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_build_cli", REPO / "data" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(["--quiet", "--segment_seconds", "1.0", "--workers", "1", *map(str, args)])


@pytest.fixture
def old_build(built, tmp_path):
    """A copy of the module's build in a data dir of its own (``tmp_path / "tfds"``): its version dir."""
    v = tmp_path / "tfds" / built.relative_to(built.parents[2])
    shutil.copytree(built, v)
    return v


@pytest.mark.parametrize("bad", ["missing", "unusable"])
def test_overwrite_with_bad_sources_keeps_the_old_build(old_build, tmp_path, capsys, bad):
    # a mistyped --source (no such folder) fails before anything is built; a folder of unusable files fails
    # inside the TFDS build: either way the build already there survives byte for byte
    data_dir = old_build.parents[2]
    before = _tree(data_dir)
    src = tmp_path / "musik"
    if bad == "unusable":
        src.mkdir()
        (src / "a.wav").write_bytes(b"")
    rc = _build_cli("--source", f"music={src}", "--data_dir", data_dir, "--overwrite")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and str(src) in err[-1]
    assert _tree(data_dir) == before  # old build unchanged, no temporary folder left
    assert len(open_split(old_build, "train")) == read_build_report(old_build)["segments"]["train"]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_overwrite_failing_mid_build_keeps_the_old_build(old_build, monkeypatch, exc):
    data_dir = old_build.parents[2]
    before = _tree(data_dir)
    original = AudioSegments._generate_examples

    def failing(self, inputs):  # fails mid-build, at the second file (one item per file)
        for i, item in enumerate(original(self, inputs)):
            if i == 1:
                raise exc
            yield item

    monkeypatch.setattr(AudioSegments, "_generate_examples", failing)
    with pytest.raises(type(exc)):
        build_dataset({"music": [SLICE / "music"]}, data_dir, config=SEG1, overwrite=True)
    assert _tree(data_dir) == before


def test_overwrite_success_swaps_in_the_new_build(old_build, tmp_path):
    data_dir = old_build.parents[2]
    assert read_build_report(old_build)["files_seen"] == 6
    fresh = build_dataset({"music": [SLICE / "music"]}, tmp_path / "fresh", config=SEG1)
    v = build_dataset({"music": [SLICE / "music"]}, data_dir, config=SEG1, overwrite=True)
    assert v == old_build
    rep = read_build_report(v)
    assert rep["files_seen"] == 2 and rep["inputs"] == [{"domain": "music", "path": str(SLICE / "music")}]
    # the same tree as a build straight into an empty data dir: nothing of the old build, no temporary folder
    assert _tree(data_dir) == _tree(tmp_path / "fresh")
    assert sorted(os.listdir(data_dir)) == ["audio_segments"]
    # the moved build reads back through TFDS (no file names the staging folder it was built in)
    assert not [n for n, b in _tree(data_dir).items() if b and b".audio_segments-build-" in b]
    import tensorflow_datasets as tfds

    assert tfds.builder_from_directory(str(v)).info.splits["train"].num_examples == rep["segments"]["train"]
    got = sorted((e["source"].decode(), int(e["offset"])) for s in rep["segments"] for e in all_examples(v, s))
    assert got == sorted((e["source"].decode(), int(e["offset"]))
                         for s in rep["segments"] for e in all_examples(fresh, s))
    assert {s.split("/")[0] for s, _ in got} == {"music"}


def test_swap_puts_the_old_build_back_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    from audiosr_jax.atomic import swap_in

    old, new, aside = tmp_path / "cfg" / "1.0.0", tmp_path / "staging" / "1.0.0", tmp_path / "staging" / "previous"
    for d, text in ((old, "old"), (new, "new")):
        d.mkdir(parents=True)
        (d / "f").write_text(text)
    rename = os.rename

    def failing_rename(src, dst):  # the new build's move into place fails (or is interrupted)
        if Path(src) == new:
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(KeyboardInterrupt):
        swap_in(new, old, aside)
    assert (old / "f").read_text() == "old" and not aside.exists() and (new / "f").read_text() == "new"


@pytest.mark.parametrize("kind", ["other files", "empty folder", "a file", "another dataset"])
def test_overwrite_refuses_a_path_that_is_not_our_build(tmp_path, kind):
    data_dir = tmp_path / "tfds"
    v = data_dir / "audio_segments" / SEG1.name / "1.0.0"
    v.parent.mkdir(parents=True)
    if kind == "a file":
        v.write_text("precious")
    else:
        v.mkdir()
        if kind == "other files":
            (v / "thesis.tex").write_text("precious")
        elif kind == "another dataset":
            (v / "dataset_info.json").write_text(json.dumps({"name": "mnist", "version": "1.0.0"}))
            (v / REPORT_NAME).write_text("{}")
    before = _tree(data_dir)
    with pytest.raises(DatasetError, match="not a build of audio_segments") as e:
        build_dataset({"music": [SLICE / "music"]}, data_dir, config=SEG1, overwrite=True)
    assert str(v) in str(e.value) and "\n" not in str(e.value)
    assert _tree(data_dir) == before


def test_manual_dir_path_used_by_tfds_build(tmp_path):
    import tensorflow_datasets as tfds

    b = AudioSegments(data_dir=str(tmp_path), config="seg5120ms_pad_mix")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(SLICE),
                                                                        try_download_gcs=False))
    exs = all_examples(b.data_dir, "train") + all_examples(b.data_dir, "validation")
    assert len(exs) == 6  # each 3 s clip: one 5.12 s segment, zero-padded
    assert all(e["valid_samples"] == 3 * SR and e["audio"].shape == (int(5.12 * SR),) for e in exs)
    assert all(not e["audio"][3 * SR:].any() for e in exs)


# ----------------------------------------------------------------------------------------------------------
# silence, tails, channels, resampling


def test_silent_segments_dropped_and_counted(tmp_path):
    src = tmp_path / "fx"
    src.mkdir()
    x = np.concatenate([noise(1.0), np.zeros(2 * SR, np.float32), noise(1.0, seed=1)])
    sf.write(src / "gappy.wav", x, SR, subtype="FLOAT")
    sf.write(src / "quiet.wav", noise(2.0, level=10 ** (-75 / 20)), SR, subtype="FLOAT")  # ~-75 dBFS RMS
    sf.write(src / "zeros.wav", np.zeros(SR, np.float32), SR, subtype="FLOAT")
    v = build_dataset({"effects": [src]}, tmp_path / "d", config=SegmentConfig(segment_seconds=1.0))
    rep = read_build_report(v)
    exs = all_examples(v, "train")
    assert sorted((e["source"].decode(), int(e["offset"])) for e in exs) == [
        ("effects/gappy.wav", 0), ("effects/gappy.wav", 3 * SR)]
    # one file gave segments: TFDS cannot write an empty split, so only train exists, and the log says why
    assert rep["segments"] == {"train": 2} and "validation split is empty" in " ".join(rep["notes"])
    assert rep["segments_dropped_silent"] == 4  # 2 from gappy, 2 from quiet
    by = {f["source"]: f for f in rep["files"]}
    assert (by["effects/quiet.wav"]["segments"], by["effects/quiet.wav"]["silent"]) == (0, 2)
    assert by["effects/quiet.wav"]["split"] is None
    assert [s["source"] for s in rep["skipped"]] == ["effects/zeros.wav"]
    assert "silent" in rep["skipped"][0]["reason"]
    assert rep["files_seen"] == rep["files_used"] + rep["files_skipped"] == 3


@pytest.mark.parametrize("tail", ["pad", "drop"])
def test_tail_pad_or_drop(tmp_path, tail):
    src = tmp_path / "m"
    src.mkdir()
    a = noise(2.5, seed=2)  # tail 0.5 s: kept with pad (>= min tail 0.25 s)
    sf.write(src / "a.wav", a, SR, subtype="FLOAT")
    sf.write(src / "b.wav", noise(2.1, seed=3), SR, subtype="FLOAT")  # tail 0.1 s: dropped either way
    cfg = SegmentConfig(segment_seconds=1.0, tail=tail, min_tail_seconds=0.25, validation_fraction=0.0)
    v = build_dataset({"music": [src]}, tmp_path / "d", config=cfg)
    rep = read_build_report(v)
    exs = {(e["source"].decode(), int(e["offset"])): e for e in all_examples(v, "train")}
    assert rep["segments"] == {"train": len(exs)}
    if tail == "pad":
        assert len(exs) == 5 and rep["tails_dropped"] == 1 and rep["tails_padded"] == 1
        t = exs[("music/a.wav", 2 * SR)]
        assert t["valid_samples"] == SR // 2 and t["audio"].shape == (SR,)
        assert not t["audio"][SR // 2:].any()
        np.testing.assert_allclose(t["audio"][: SR // 2] / 32767.0, a[2 * SR:], atol=1.0 / 32767)
    else:
        assert len(exs) == 4 and rep["tails_dropped"] == 2 and rep["tails_padded"] == 0
        assert all(e["valid_samples"] == SR for e in exs.values())


def test_channels_split_vs_mix_and_resampling(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    t = np.arange(int(2 * 44100)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)], axis=1)
    sf.write(src / "st.wav", stereo.astype(np.float32), 44100, subtype="FLOAT")
    results = {}
    for ch in ("split", "mix"):
        cfg = SegmentConfig(segment_seconds=1.0, channels=ch, validation_fraction=0.0)
        v = build_dataset({"speech": [src]}, tmp_path / ch, config=cfg)
        results[ch] = {(int(e["channel"]), int(e["offset"])): e for e in all_examples(v, "train")}
    assert sorted(results["split"]) == [(0, 0), (0, SR), (1, 0), (1, SR)]
    assert sorted(results["mix"]) == [(-1, 0), (-1, SR)]
    t48 = np.arange(SR) / SR
    mid = slice(1000, SR - 1000)  # away from the resampler's edges
    for (ch, off), e in results["split"].items():
        assert e["orig_sample_rate"] == 44100 and e["valid_samples"] == SR
        amp, f = (0.3, 440) if ch == 0 else (0.2, 1000)
        want = amp * np.sin(2 * np.pi * f * (t48 + off / SR))
        if off == 0:
            np.testing.assert_allclose(e["audio"][mid] / 32767.0, want[mid], atol=2e-3)
    mixed = results["mix"][(-1, 0)]["audio"].astype(np.float64)
    both = (results["split"][(0, 0)]["audio"].astype(np.float64) + results["split"][(1, 0)]["audio"]) / 2
    assert np.max(np.abs(mixed - both)[mid]) <= 2.0


# ----------------------------------------------------------------------------------------------------------
# bad data


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_bad_files_are_skipped_listed_and_counted(tmp_path, caplog):
    src = tmp_path / "mixed"
    (src / "sub").mkdir(parents=True)
    shutil.copy(SLICE / "speech" / "tuxpaint-es_0000.flac", src / "good.flac")
    sf.write(src / "sub" / "good_44k.wav", noise(2.0, sr=44100, seed=4), 44100, subtype="PCM_16")
    shutil.copy(SLICE / "speech" / "tuxpaint-es_0001.flac", src / "trunc.flac")
    _truncate(src / "trunc.flac")
    sf.write(src / "trunc.wav", noise(2.0, seed=5), SR, subtype="PCM_16")
    _truncate(src / "trunc.wav")
    (src / "empty.wav").write_bytes(b"")
    x = noise(2.0, seed=6)
    x[1000] = np.nan
    sf.write(src / "nan.wav", x, SR, subtype="FLOAT")
    sf.write(src / "rate1k.wav", noise(3.0, sr=1000, seed=7), 1000, subtype="PCM_16")
    sf.write(src / "ch32.wav", noise(1.5, channels=32, seed=8), SR, subtype="PCM_16")
    (src / "notes.txt").write_text("not audio")
    (src / "fake.wav").write_text("RIFF but not really")

    caplog.set_level("WARNING", logger="audiosr_jax.data.segments")
    v = build_dataset({"speech": [src]}, tmp_path / "d", config=SegmentConfig(segment_seconds=1.0))
    rep = read_build_report(v)
    reasons = {s["source"]: s["reason"] for s in rep["skipped"]}
    expect = {
        "speech/trunc.flac": "corrupt", "speech/trunc.wav": "truncated", "speech/empty.wav": "0 bytes",
        "speech/nan.wav": "NaN", "speech/rate1k.wav": "1000 Hz", "speech/ch32.wav": "32 channels",
        "speech/fake.wav": "not a readable audio file",
    }
    assert set(reasons) == set(expect)
    for source, word in expect.items():
        assert word in reasons[source], (source, reasons[source])
        assert source.split("/")[1] in caplog.text  # each skip is in the log too
    assert rep["ignored_non_audio"] == [str(src / "notes.txt")]
    # nothing lost: seen = used + skipped; written segments = what the dataset holds
    assert rep["files_seen"] == 9 == rep["files_used"] + rep["files_skipped"]
    assert sorted(f["source"] for f in rep["files"]) == ["speech/good.flac", "speech/sub/good_44k.wav"]
    n = {s: len(open_split(v, s)) for s in ("train", "validation")}
    assert n == rep["segments"] and sum(n.values()) == 3 + 2
    for f in rep["files"]:
        assert f["segments"] + f["silent"] == {"speech/good.flac": 3, "speech/sub/good_44k.wav": 2}[f["source"]]


def test_folder_without_audio_is_an_error_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "textonly").mkdir()
    (tmp_path / "textonly" / "readme.txt").write_text("x")
    for folder in (empty, tmp_path / "textonly"):
        with pytest.raises(DatasetError, match="contains no audio files") as e:
            build_dataset({"music": [SLICE / "music"], "effects": [folder]}, tmp_path / "d", config=SEG1)
        assert str(folder) in str(e.value) and isinstance(e.value, UserError)
    with pytest.raises(DatasetError, match="no such file or folder"):
        build_dataset({"music": [tmp_path / "missing"]}, tmp_path / "d", config=SEG1)
    assert not (tmp_path / "d").exists()


def test_every_file_bad_is_an_error(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.wav").write_bytes(b"")
    sf.write(src / "b.wav", noise(1.0, sr=1000), 1000)
    with pytest.raises(DatasetError, match="no usable audio.*all 2 audio files were skipped"):
        build_dataset({"speech": [src]}, tmp_path / "d", config=SEG1)
    assert not (tmp_path / "d").exists()


def test_all_segments_silent_is_an_error(tmp_path):
    src = tmp_path / "q"
    src.mkdir()
    sf.write(src / "q.wav", noise(2.0, level=1e-5), SR, subtype="FLOAT")
    with pytest.raises(DatasetError, match="no segments written"):
        build_dataset({"speech": [src]}, tmp_path / "d", config=SEG1)
    assert not (tmp_path / "d").exists()


def test_segment_longer_than_every_file(tmp_path):
    cfg = SegmentConfig(segment_seconds=20.0, tail="drop")
    with pytest.raises(DatasetError, match=r"no segment fits: segment length 20 s.*longest is .*\(3\.000 s\)"):
        build_dataset(slice_sources(), tmp_path / "d", config=cfg)
    assert not (tmp_path / "d").exists()
    # with tail="pad" every file becomes one padded segment
    v = build_dataset(slice_sources(), tmp_path / "p", config=SegmentConfig(segment_seconds=20.0))
    exs = all_examples(v, "train") + all_examples(v, "validation")
    assert len(exs) == 6
    assert all(e["offset"] == 0 and e["valid_samples"] == 3 * SR and e["audio"].shape == (20 * SR,) for e in exs)
    # ... unless the files are shorter than min_tail_seconds too
    with pytest.raises(DatasetError, match="no segment fits"):
        build_dataset(slice_sources(), tmp_path / "q", config=SegmentConfig(segment_seconds=20.0,
                                                                            min_tail_seconds=5.0))


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    (tmp_path / "e").mkdir()
    r = subprocess.run([sys.executable, str(REPO / "data" / "build.py"), "--source", f"music={tmp_path / 'e'}",
                        "--data_dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr
    assert "contains no audio files" in r.stderr
