"""TFDS builder ``audio_segments``: audio files -> 48 kHz mono int16 training segments in ArrayRecord.

Sources are folders (searched recursively) and manifests (CSV / JSON Lines rows of path or URI, domain,
licence, optional bandwidth: :mod:`audiosr_jax.data.manifest`). Every audio file that soundfile (libsndfile)
reads, at any sample rate and channel count, is decoded **once** (:func:`audiosr_jax.data.cutting.process_file`):

1. checked from its header (sample rate >= ``min_sample_rate``, channels <= ``max_channels``, frames > 0, a
   WAV whose data chunk runs past the end of the file is refused as truncated),
2. decoded (NaN / inf samples and silent files are refused); its bandwidth is measured (the 60 dB rule of
   :mod:`audiosr_jax.data.bandwidth`, on the mono mix; the lower of it and a manifest's declared value is
   stored in every example as ``bandwidth_hz``); mixed to mono (``channels="mix"``) or kept as one example
   stream per channel (``channels="split"``), resampled to 48 kHz with soxr (VHQ),
3. cut into segments of ``segment_samples`` with hop ``hop_samples`` (no overlap by default); the tail shorter
   than a segment is zero-padded (``tail="pad"``, only if it is at least ``min_tail_seconds`` long) or dropped,
4. a segment whose RMS over its valid (unpadded) samples is below ``silence_dbfs`` is dropped and counted,
5. stored as int16 (``round(x * 32767)``, clipped) with its metadata (see :func:`AudioSegments._info`).

Files go to ``train`` or ``validation`` by a stable hash of their source name (``<domain>/<relative path>``),
so the segments of one file never straddle splits (:mod:`audiosr_jax.data.splits`: among files that gave
segments; a split left empty gets the file nearest the boundary). A file that cannot be used is skipped with
a one-line reason; the build never crashes on bad data. Each build writes ``build_report.json`` next to the
ArrayRecord files (:mod:`audiosr_jax.data.report`) and logs the same through :mod:`logging` (logger
``audiosr_jax.data.segments``).

Two ways to run the same build, giving the same examples (keys, bytes, splits) and counts:

* in one process (default): a thread pool decodes files in input order; each file's examples go straight to
  its split's TFDS writer, which keeps at most ``cache_bytes`` of serialized examples in memory and spills the
  rest to the staging folder (only the two files whose split may still move are held back);
* with Apache Beam (``beam_options``; :mod:`audiosr_jax.data.beam`): the per-file work as a Beam pipeline
  (DirectRunner locally, Dataflow / Flink / Spark by the runner's options), written by TFDS's BeamWriter.

Deterministic: TFDS orders examples by a hash of the example key, and examples are serialized with sorted
protobuf map entries (:class:`DeterministicSerializer`); two builds of the same inputs give byte-identical
ArrayRecord files, ``features.json`` and ``dataset_info.json``.

Nothing is lost on a rebuild: :func:`build_dataset` builds into a hidden staging folder next to the dataset and
renames the finished version dir into place; with ``overwrite`` the previous build (only a build of this builder)
is replaced only then, so bad sources, a crash or Ctrl-C leave it byte for byte as it was.

Reading needs no TensorFlow: ``open_split(version_dir, "train")[i]`` is a dict of numpy values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import shuffle as tfds_shuffle
from tensorflow_datasets.core import splits as splits_lib
from tensorflow_datasets.core import writer as writer_lib

from audiosr_jax.atomic import swap_in
from audiosr_jax.data.cutting import ordered_map, process_file
from audiosr_jax.data.inputs import Input, collect_inputs, normalize_sources
from audiosr_jax.data.report import Tally, make_report, outcome_problem
from audiosr_jax.data.segment_config import (  # noqa: F401  (re-exported: the dataset's public names)
    AUDIO_EXTENSIONS,
    DATASET_VERSION,
    DOMAINS,
    REPORT_NAME,
    SAMPLE_RATE,
    SPLITS,
    DatasetError,
    SegmentConfig,
)
from audiosr_jax.data.splits import Decision, SplitRouter, assign_splits  # noqa: F401  (assign_splits re-exported)
from audiosr_jax.paths import is_remote, scheme
from audiosr_jax.paths import resolve as resolve_path

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 64 << 20


# ----------------------------------------------------------------------------------------------------------
# the TFDS builder
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class AudioSegmentsConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying a :class:`SegmentConfig` (its ``name`` is ``segment.name``)."""

    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)


def _make_builder_config(segment: SegmentConfig) -> AudioSegmentsConfig:
    return AudioSegmentsConfig(
        name=segment.name, version=DATASET_VERSION,
        description="SegmentConfig " + json.dumps(segment.to_dict(), sort_keys=True), segment=segment)


_PRESETS = (
    SegmentConfig(),
    SegmentConfig(tail="drop"),
    SegmentConfig(channels="split"),
    SegmentConfig(segment_seconds=5.12),
)


class DeterministicSerializer(example_serializer.ExampleSerializer):
    """TFDS's serializer with sorted protobuf map entries.

    ``SerializeToString()`` (upb) writes the entries of a ``tf.train.Example``'s ``features`` map in a hash order
    that changes from process to process, so two builds of the same data would differ byte for byte (same
    records when parsed). Readers parse both orders alike. A class of this module, so Beam workers that unpickle
    the writer import it and serialize the same way."""

    def serialize_example(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)


@contextlib.contextmanager
def deterministic_serializer_for_tfds():
    """While TFDS creates its writers (the Beam path), its ``ExampleSerializer`` is :class:`DeterministicSerializer`."""
    original = example_serializer.ExampleSerializer
    example_serializer.ExampleSerializer = DeterministicSerializer
    try:
        yield
    finally:
        example_serializer.ExampleSerializer = original


class _LocalGfile:
    """The part of ``tf.io.gfile`` / ``tf.errors`` TFDS's shuffler uses to spill to disk, without TensorFlow."""

    class io:  # noqa: N801  (mirrors tf.io.gfile)
        class gfile:  # noqa: N801
            GFile = staticmethod(open)
            exists = staticmethod(os.path.exists)
            remove = staticmethod(os.remove)

    class errors:  # noqa: N801
        class ResourceExhaustedError(Exception):
            pass


@contextlib.contextmanager
def _bounded_shuffle_memory(limit: int):
    """TFDS's shuffler keeps up to ``limit`` bytes per split in memory, then spills to its (local) folder.

    Its default is 1 GB and its spill goes through TensorFlow's gfile, which is not installed: a split over 1 GB
    would fail. The spilled and in-memory paths give the same order (sorted by hashed key)."""
    saved = tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf
    tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf = limit, _LocalGfile
    try:
        yield
    finally:
        tfds_shuffle.MAX_MEM_BUFFER_SIZE, tfds_shuffle.tf = saved


class _SplitWriters:
    """One TFDS writer per split, made on the split's first example (the single-process path)."""

    def __init__(self, builder: tfds.core.GeneratorBasedBuilder, download_config):
        self._builder, self._config = builder, download_config
        self._features = builder.info.features
        self._writers: dict = {}

    def write(self, split: str, key: str, example: dict) -> None:
        if split not in self._writers:
            b, c = self._builder, self._config
            self._writers[split] = writer_lib.Writer(
                serializer=DeterministicSerializer(self._features.get_serialized_info()),
                filename_template=b._get_filename_template(split_name=split), hash_salt=split,
                disable_shuffling=b.info.disable_shuffling, shard_config=c.get_shard_config(),
                example_writer=b._example_writer(), ignore_duplicates=c.ignore_duplicates)
        self._writers[split].write(key, self._features.encode_example(example))

    def finalize(self, splits) -> list[splits_lib.SplitInfo]:
        infos = []
        for split in splits:
            shard_lengths, total_size = self._writers[split].finalize()
            infos.append(splits_lib.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=total_size,
                                              filename_template=self._builder._get_filename_template(split_name=split)))
        return infos


def _log_record(record: dict) -> None:
    if "reason" in record:
        logger.warning("skipped %s: %s", record["path"], record["reason"])
    elif record["segments"] == 0:
        logger.warning("%s: no segment kept (%d silent, %d tail(s) dropped)", record["path"], record["silent"],
                       record["tails_dropped"])


def uses_beam(download_config) -> bool:
    """Whether TFDS was asked to run this build as a Beam pipeline."""
    return download_config.beam_options is not None or download_config.beam_runner is not None


class AudioSegments(tfds.core.GeneratorBasedBuilder):
    """48 kHz mono int16 audio segments with per-example metadata (see the module docstring).

    Sources: the ``sources`` argument (``{domain: [folder, ...]}`` or ``[(domain, folder), ...]``) and
    ``manifests`` (paths or URIs of manifest files), or, when both are empty (the ``tfds build`` path), the
    manual dir's ``speech/``, ``music/`` and ``effects/`` subfolders. ``beam_work_dir``: where a Beam build keeps
    its input list and per-file records (a folder its workers can reach; default: under the download dir).
    """

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "int16 segments (raw bytes) with source, offset, domain, original rate, channel, "
                                      "bandwidth."}
    BUILDER_CONFIGS = [_make_builder_config(s) for s in _PRESETS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Only for `tfds build`: point --manual_dir at a folder with speech/, music/ and/or effects/ subfolders of "
        "audio files (e.g. out/corpus). Prefer `python data/build.py --source DOMAIN=FOLDER ...`.")

    def __init__(self, *, sources=None, manifests=(), workers: int | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, beam_work_dir=None, **kwargs):
        self._sources = sources
        self._manifests = tuple(manifests or ())
        self._cache_bytes = cache_bytes
        self._beam_work_dir = beam_work_dir
        self._workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        if kwargs.get("file_format") is None:  # TFDS's default (tfrecord) needs TensorFlow
            kwargs["file_format"] = "array_record"
        super().__init__(**kwargs)

    # static: depends on nothing but the class and its config (readers and grain workers re-create it)
    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Training segments for audio super-resolution: 48 kHz mono int16 (float * 32767).",
            features=tfds.features.FeaturesDict({
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding="bytes"),
                "valid_samples": tfds.features.Scalar(np.int32, doc="real samples before tail padding"),
                "source": tfds.features.Text(doc="<domain>/<path relative to its source folder>"),
                "offset": tfds.features.Scalar(np.int64, doc="first sample of the segment in the file, 48 kHz"),
                "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
                "orig_sample_rate": tfds.features.Scalar(np.int32, doc="the file's sample rate in Hz"),
                "channel": tfds.features.Scalar(np.int32, doc="channel index, -1 when mixed to mono"),
                "bandwidth_hz": tfds.features.Scalar(
                    np.float32, doc="the file's bandwidth in Hz (60 dB rule; a manifest's lower value wins)"),
            }),
            supervised_keys=None,
            homepage="https://github.com/haoheliu/versatile_audio_super_resolution",
        )

    # -- inputs --------------------------------------------------------------------------------------------

    def _collect_inputs(self, dl_manager) -> tuple[list[Input], list[str], list[dict], str]:
        """(inputs, ignored non-audio files, the report's ``inputs`` entries, the inputs named for messages)."""
        if self._sources or self._manifests:
            pairs = normalize_sources(self._sources or (), allow_empty=bool(self._manifests))
        else:
            manual = Path(os.fspath(dl_manager.manual_dir))
            pairs = [(d, manual / d) for d in DOMAINS if (manual / d).is_dir()]
            if not pairs:
                raise DatasetError(f"{manual}: no {'/, '.join(DOMAINS)}/ subfolder to build from")
        inputs, ignored = collect_inputs(pairs, self._manifests)
        described = ([{"domain": d, "path": str(p)} for d, p in pairs]
                     + [{"manifest": os.fspath(m)} for m in self._manifests])
        named = ", ".join([str(p) for _, p in pairs] + [os.fspath(m) for m in self._manifests])
        return inputs, ignored, described, named

    def _report_head(self, described: list[dict]) -> dict:
        cfg: SegmentConfig = self.builder_config.segment
        return {"dataset": self.name, "config_name": cfg.name, "version": str(self.version),
                "segment_config": cfg.to_dict(), "segment_samples": cfg.segment_samples, "sample_rate": SAMPLE_RATE,
                "inputs": described}

    # -- generation: TFDS calls this with the download config (beam_options / beam_runner select Beam) ------

    def _split_generators(self, dl_manager):
        """Not used: :meth:`_generate_splits` writes every split in one pass over the files (a file's split
        is known only once the files that gave segments are known, see :mod:`audiosr_jax.data.splits`)."""
        raise NotImplementedError("AudioSegments writes its splits in _generate_splits")

    def _generate_splits(self, dl_manager, download_config) -> list[splits_lib.SplitInfo]:
        inputs, ignored, described, named = self._collect_inputs(dl_manager)
        if uses_beam(download_config):
            from audiosr_jax.data import beam as beam_build

            infos, records, decision = beam_build.write_splits(self, inputs, named, dl_manager, download_config)
        else:
            infos, records, decision = self._write_in_process(inputs, named, download_config)
        for note in decision.notes:
            logger.warning("%s", note)
        report = make_report(self._report_head(described), records, decision, ignored)
        # written into the (temporary) version dir, which TFDS renames when every split is written
        path = resolve_path(os.fspath(self.data_dir)) / REPORT_NAME
        path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        return infos

    def _generate_examples(self, inputs):
        """Single-process: ``(record, [(key, example), ...])`` per file, in input order, decoded by a thread pool
        (at most ``2 * workers`` files in flight). The Beam build's counterpart is
        :class:`audiosr_jax.data.beam.GenerateExamples`."""
        cfg: SegmentConfig = self.builder_config.segment
        yield from ordered_map(lambda inp: process_file(inp, cfg), inputs, self._workers, ahead=2 * self._workers)

    def _write_in_process(self, inputs: list[Input], named: str, download_config):
        """Every file decoded once, its examples written as it comes -> (split infos, records, decision)."""
        cfg: SegmentConfig = self.builder_config.segment
        tally, records = Tally(cfg.validation_fraction), []
        router = SplitRouter(cfg.validation_fraction)
        writers = _SplitWriters(self, download_config)
        with _bounded_shuffle_memory(self._cache_bytes):
            for record, examples in self._generate_examples(inputs):
                records.append(record)
                tally.add(record)
                _log_record(record)
                for split, (key, example) in router.feed(record["source"], examples) if examples else ():
                    writers.write(split, key, example)
            problem = outcome_problem(tally, cfg, SAMPLE_RATE, named)
            if problem:
                raise DatasetError(problem)
            for split, (key, example) in router.finish():
                writers.write(split, key, example)
            return writers.finalize(router.decision.splits), records, router.decision


def builder_config_for(segment: SegmentConfig | None) -> AudioSegmentsConfig:
    """The class's preset BuilderConfig when one matches ``segment``, else a custom one with the same naming."""
    segment = segment or SegmentConfig()
    for bc in AudioSegments.BUILDER_CONFIGS:
        if bc.segment == segment:
            return bc
    return _make_builder_config(segment)


# ----------------------------------------------------------------------------------------------------------
# build / read API
# ----------------------------------------------------------------------------------------------------------


def beam_pipeline_options(options):
    """``--beam_options`` text (``"--runner=DataflowRunner --project=p ..."``), a list of such arguments, or a
    ``PipelineOptions`` -> ``PipelineOptions``. Empty text: DirectRunner with one worker process per core."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise DatasetError("a Beam build needs apache-beam: pip install -e '.[beam]'") from None
    if isinstance(options, PipelineOptions):
        return options
    args = shlex.split(options) if isinstance(options, str) else list(options)
    if not args:
        args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={os.cpu_count() or 1}"]
    return PipelineOptions(args)


def build_dataset(sources, data_dir, *, config: SegmentConfig | None = None, overwrite: bool = False,
                  workers: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES, manifests=(),
                  beam_options=None) -> Path:
    """Build the ``audio_segments`` dataset from folders of audio files and/or manifests.

    Args:
      sources: ``{domain: [folder_or_file, ...]}`` or ``[(domain, folder_or_file), ...]``, domain in
        ``DOMAINS``. Folders are searched recursively; files are taken in sorted order. May be empty when
        ``manifests`` are given.
      data_dir: TFDS data dir; the dataset goes to ``<data_dir>/audio_segments/<config name>/<version>/``.
        A local path or a ``file://`` URI; an object store (``gs://``) only for a Beam build (Dataflow's workers
        write there; staged and swapped object by object, :mod:`audiosr_jax.data.object_store`). Otherwise build
        locally and copy the version dir there (``gsutil -m cp -r``); training reads it there.
      config: the :class:`SegmentConfig` (default: 10.24 s, pad, mix).
      overwrite: replace an existing build of the same config; without it an existing build is an error (the
        config name does not encode the sources, so silently reusing it could serve other data). Only a build
        of this builder is replaced, and only once the new one is complete (see :func:`audiosr_jax.atomic.swap_in`): a build that
        fails or is interrupted leaves the previous one as it was.
      workers: decode/resample threads of the single-process build (default min(4, cpu count)); the output
        does not depend on it.
      cache_bytes: serialized examples each split's writer keeps in memory before spilling to the staging
        folder (single-process build); the output does not depend on it.
      manifests: manifest files (CSV / JSON Lines / JSON; paths or URIs), see :mod:`audiosr_jax.data.manifest`.
      beam_options: None builds in this process; otherwise run the build as an Apache Beam pipeline with these
        options (see :func:`beam_pipeline_options`; ``""`` = DirectRunner, one worker process per core). Same
        dataset either way.

    Returns:
      The version dir (``dataset_info.json``, ``features.json``, ``audio_segments-{train,validation}
      .array_record-*``, ``build_report.json``).

    Raises:
      DatasetError: no sources, unknown domain, a folder with no audio, a bad manifest, no usable file, no segment
        fits, every segment silent, an existing build without ``overwrite``, something at the version dir's path
        that is not a build of ours, or a ``data_dir`` on an object store without Beam. Bad *files* never raise: they are
        skipped and listed in ``build_report.json``.
    """
    t0 = time.perf_counter()
    if is_remote(data_dir) and beam_options is None:
        raise DatasetError(f"{os.fspath(data_dir)}: a dataset is built on the local disk; build it there and copy "
                           f"the version dir to the object store (gsutil -m cp -r), then train with "
                           f"--config.data.dataset_dir=<that URI>; or build it there with --beam on a runner "
                           f"whose workers can write it (Dataflow)")
    bc = builder_config_for(config)
    manifests = tuple(manifests or ())
    pairs = normalize_sources(sources or (), allow_empty=bool(manifests))
    if is_remote(data_dir):
        return _build_on_object_store(pairs, manifests, data_dir, bc, overwrite, beam_pipeline_options(beam_options))
    data_dir = Path(os.fspath(resolve_path(data_dir)) if scheme(data_dir) == "file" else data_dir)
    rel = Path(AudioSegments.name, bc.name, str(AudioSegments.VERSION))  # TFDS's <name>/<config>/<version>
    version_dir = data_dir / rel
    if version_dir.exists() or version_dir.is_symlink():
        if not overwrite:
            raise DatasetError(f"{version_dir} already exists; pass overwrite=True (--overwrite) to rebuild it")
        if not _is_our_build(version_dir):
            raise DatasetError(f"{version_dir}: not a build of {AudioSegments.name} (no dataset_info.json and "
                               f"{REPORT_NAME} of this builder); refusing to replace it, move it away first")
    # a missing folder, one without audio or a bad manifest: fail before anything touches the disk
    collect_inputs(pairs, manifests)
    beam = None if beam_options is None else beam_pipeline_options(beam_options)
    # build into a hidden sibling TFDS data dir (same filesystem: the finished version dir is renamed into
    # place); removed whatever happens, so a failed build leaves data_dir as it was
    new_data_dir = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{AudioSegments.name}-build-", dir=data_dir))
    try:
        builder = AudioSegments(sources=pairs, manifests=manifests, workers=workers, cache_bytes=cache_bytes,
                                beam_work_dir=staging / "beam", data_dir=str(staging), config=bc)
        built = Path(os.fspath(builder.data_dir))
        if built != staging / rel:  # the layout this function relies on to find the build
            raise RuntimeError(f"TFDS put the {bc.name} build at {built}, expected {staging / rel}")
        dl_config = tfds.download.DownloadConfig(try_download_gcs=False, beam_options=beam,
                                                 compute_stats=tfds.download.ComputeStatsMode.SKIP)
        builder.download_and_prepare(download_dir=str(staging / "downloads"), download_config=dl_config)
        swap_in(built, version_dir, aside=staging / "previous")
        _carry_config_metadata(staging / rel.parts[0], data_dir / rel.parts[0])
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the new build's leftovers, or the replaced old build
        if new_data_dir:
            _drop_empty_dir(data_dir)
    rep = json.loads((version_dir / REPORT_NAME).read_text())
    logger.info(
        "built %s in %.1f s%s: %d files seen, %d used, %d skipped; segments %s; %d silent dropped, %d tails dropped,"
        " %d tails padded", version_dir, time.perf_counter() - t0, " (Beam)" if beam is not None else "",
        rep["files_seen"], rep["files_used"], rep["files_skipped"], rep["segments"], rep["segments_dropped_silent"],
        rep["tails_dropped"], rep["tails_padded"])
    for s in rep["skipped"]:
        logger.info("  skipped %s: %s", s["path"], s["reason"])
    return version_dir


def _build_on_object_store(pairs, manifests, data_dir: str, bc: AudioSegmentsConfig, overwrite: bool, beam):
    """The Beam build with ``data_dir`` on an object store (:mod:`audiosr_jax.data.object_store`)."""
    from audiosr_jax.data import object_store

    collect_inputs(pairs, manifests)  # a missing folder or a bad manifest: fail before anything is written
    rel = f"{AudioSegments.name}/{bc.name}/{AudioSegments.VERSION}"
    dl_config = tfds.download.DownloadConfig(try_download_gcs=False, beam_options=beam,
                                             compute_stats=tfds.download.ComputeStatsMode.SKIP)

    def factory(staging):
        return AudioSegments(sources=pairs, manifests=manifests, beam_work_dir=staging / "beam",
                             data_dir=os.fspath(staging), config=bc)

    def prepare(builder, staging):
        builder.download_and_prepare(download_dir=os.fspath(staging / "downloads"), download_config=dl_config)

    return object_store.build(factory, data_dir, rel, AudioSegments.name, overwrite, prepare)


def _is_our_build(path: Path) -> bool:
    """True when ``path`` is a finished build of this builder (a real folder holding TFDS's
    ``dataset_info.json`` named ``audio_segments`` and our ``build_report.json``), i.e. safe to replace."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        info = json.loads((path / "dataset_info.json").read_text())
        report = json.loads((path / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(info, dict) and isinstance(report, dict) and info.get("name") == AudioSegments.name
            and report.get("dataset") == AudioSegments.name)


def _carry_config_metadata(staged: Path, dataset_dir: Path) -> None:
    """Move TFDS's ``<name>/.config/metadata.json`` (the default config name, which TFDS rewrites on every
    build) from the staging data dir to the real one, so the layout is the same as a build made in place."""
    src = staged / ".config" / "metadata.json"
    if src.is_file():
        (dataset_dir / ".config").mkdir(parents=True, exist_ok=True)
        os.replace(src, dataset_dir / ".config" / "metadata.json")


def _drop_empty_dir(path: Path) -> None:
    try:
        for sub in sorted(path.rglob("*"), reverse=True):
            if sub.is_dir():
                sub.rmdir()
        path.rmdir()
    except OSError:  # not empty (or absent): leave it
        pass


def open_split(version_dir, split: str):
    """Random-access source of one split: ``src[i]`` is a dict of numpy values (``audio`` int16 [N],
    ``valid_samples``, ``source`` (bytes), ``offset``, ``domain`` (int, index into ``DOMAINS``),
    ``orig_sample_rate``, ``channel``). No TensorFlow is imported.

    ``version_dir``: a local path or a URI (``gs://bucket/tfds/audio_segments/<config>/<version>``, or
    ``file://``; :func:`audiosr_jax.paths.resolve`). TFDS reads the metadata through epath (``gcsfs`` or
    TensorFlow for ``gs://``); the ArrayRecord files are opened by array_record's own reader, whose 0.8.6
    build has a ``gs://`` (GCS) reader but none for ``s3://`` / ``az://``."""
    return tfds.builder_from_directory(resolve_path(version_dir)).as_data_source(split=split)


def read_build_report(version_dir) -> dict:
    """The ``build_report.json`` of a build (see :func:`build_dataset`); ``version_dir`` may be a URI."""
    return json.loads((resolve_path(version_dir) / REPORT_NAME).read_text())
