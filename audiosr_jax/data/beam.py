"""The ``audio_segments`` build as an Apache Beam pipeline (TFDS's Beam path), on any Beam runner.

Pipeline (one pass; every worker holds one file's audio and examples at a time)::

    inputs.jsonl ─ReadFromText─Reshuffle─ProcessFiles─┬─ examples (source, key, example) ─AssignSplit─Partition─▶ TFDS BeamWriter per split
                                                      └─ records ─┬─ Tally (CombineGlobally) ─WriteTally─▶ side input of AssignSplit
                                                                  └─ WriteRecords (text shards) ─▶ the driver's build_report.json

* ``ProcessFiles`` runs :func:`audiosr_jax.data.cutting.process_file` (the single-process build's per-file
  function): each file is decoded once; a bad file gives a record with its reason, never an exception.
  Beam counters (namespace ``audio_segments``) count files used / skipped and segments as they go.
* The split rule needs the files that gave segments (:mod:`audiosr_jax.data.splits`); its few inputs are a
  :class:`~audiosr_jax.data.report.Tally` merged from all workers, so the examples wait for it as a side input.
  The tally is saved before any example is written: when a split gets nothing (or nothing is usable), the
  driver reads it and stops with the single-process build's message, or runs once more without the empty
  split (fewer than two files gave segments).
* Examples are serialized by :class:`audiosr_jax.data.segments.DeterministicSerializer` in the workers.

A worker that dies is the runner's business: Dataflow retries its bundle (outputs of a failed bundle are
discarded, so nothing is lost or written twice); the DirectRunner fails the pipeline instead, and the build
leaves nothing behind (a rerun gives the same dataset).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import apache_beam as beam
from etils import epath
from tensorflow_datasets.core import split_builder as split_builder_lib

from audiosr_jax.data.cutting import process_file
from audiosr_jax.data.inputs import Input
from audiosr_jax.data.report import Tally, outcome_problem
from audiosr_jax.data.segment_config import (
    SAMPLE_RATE,
    SPLITS,
    DatasetError,
    SegmentConfig,
)

logger = logging.getLogger("audiosr_jax.data.segments")

NAMESPACE = "audio_segments"
# Test-only: "<source name>=<marker file>": the worker that processes that file exits at once (os._exit), the
# first time only (the marker records that it happened). Simulates a worker dying mid-build.
KILL_ENV = "AUDIOSR_BUILD_TEST_KILL_WORKER"


def _maybe_die(source: str) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    target, _, marker = spec.partition("=")
    if source == target and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)


class _ProcessFiles(beam.DoFn):
    """A JSON line of an :class:`Input` -> (source, key, example) per example; its record as ``records``."""

    def __init__(self, cfg: dict):
        self._cfg = cfg

    def setup(self):
        self.cfg = SegmentConfig.from_dict(self._cfg)
        self.counters = {k: beam.metrics.Metrics.counter(NAMESPACE, k)
                         for k in ("files_used", "files_skipped", "segments", "segments_dropped_silent")}

    def process(self, line: str):
        inp = Input.from_dict(json.loads(line))
        _maybe_die(inp.source)
        record, examples = process_file(inp, self.cfg)
        if "reason" in record:
            self.counters["files_skipped"].inc()
            logger.warning("skipped %s: %s", record["path"], record["reason"])
        else:
            self.counters["files_used"].inc()
            self.counters["segments"].inc(record["segments"])
            self.counters["segments_dropped_silent"].inc(record["silent"])
        yield beam.pvalue.TaggedOutput("records", record)
        for key, example in examples:
            yield inp.source, key, example


class _TallyFn(beam.CombineFn):
    """Records -> one :class:`Tally`."""

    def __init__(self, validation_fraction: float):
        self._fraction = validation_fraction

    def create_accumulator(self):
        return Tally(self._fraction)

    def add_input(self, tally, record):
        return tally.add(record)

    def merge_accumulators(self, tallies):
        tallies = list(tallies)
        out = tallies[0]
        for t in tallies[1:]:
            out = out.merge(t)
        return out

    def extract_output(self, tally):
        return tally


def _save_and_decide(tally: Tally, path: str):
    """Save the tally for the driver (before any example is written), then the split decision."""
    epath.Path(path).write_bytes(pickle.dumps(tally))
    return tally.splits.decide()


def _route(item, decision):
    source, key, example = item
    return decision.split_of(source), key, example


class GenerateExamples(beam.PTransform):
    """PBegin -> ``{"examples": (split, key, example), "records": record dict}`` for the files listed (one
    :class:`Input` as JSON per line) in ``inputs_path``. ``tally_path``: where the merged tally is saved."""

    def __init__(self, inputs_path: str, cfg: SegmentConfig, tally_path: str):
        super().__init__()
        self._inputs_path, self._cfg, self._tally_path = inputs_path, cfg, tally_path

    def expand(self, pbegin):
        results = (pbegin
                   | "ReadInputs" >> beam.io.ReadFromText(self._inputs_path)
                   | "Spread" >> beam.Reshuffle()  # a small text file is one bundle: spread files over workers
                   | "ProcessFiles" >> beam.ParDo(_ProcessFiles(self._cfg.to_dict())).with_outputs(
                       "records", main="examples"))
        decision = (results.records
                    | "Tally" >> beam.CombineGlobally(_TallyFn(self._cfg.validation_fraction))
                    | "SaveTally" >> beam.Map(_save_and_decide, path=self._tally_path))
        examples = results.examples | "AssignSplit" >> beam.Map(_route, decision=beam.pvalue.AsSingleton(decision))
        return {"examples": examples, "records": results.records}


def _split_index(item, n: int) -> int:
    return SPLITS.index(item[0])


def _key_example(item):
    return item[1], item[2]


def write_splits(builder, inputs: list[Input], named: str, dl_manager, download_config):
    """Run the pipeline for ``builder`` (an ``AudioSegments``) -> (split infos, records, decision).

    Raises DatasetError with the single-process build's message when nothing can be written."""
    cfg: SegmentConfig = builder.builder_config.segment
    declared = SPLITS if cfg.validation_fraction > 0 and len(inputs) >= 2 else ("train",)
    root = epath.Path(builder._beam_work_dir or epath.Path(os.fspath(dl_manager.download_dir)) / "beam")
    for attempt in (0, 1):
        work = root / f"attempt-{attempt}"
        try:
            infos = _run_pipeline(builder, inputs, work, declared, download_config)
        except Exception as e:
            tally = _load_tally(work)
            if tally is None:
                raise
            problem = outcome_problem(tally, cfg, SAMPLE_RATE, named)
            if problem:
                raise DatasetError(problem) from e
            decision = tally.splits.decide()
            if attempt or decision.splits == declared:
                raise
            logger.warning("only split(s) %s got files: running the pipeline again without the others",
                           ", ".join(decision.splits))
            declared = decision.splits
            _drop_partial_shards(builder)
            continue
        return infos, _load_records(work), _load_tally(work).splits.decide()
    raise AssertionError("unreachable")


def _run_pipeline(builder, inputs: list[Input], work, declared, download_config) -> list:
    from audiosr_jax.data.segments import deterministic_serializer_for_tfds

    work.mkdir(parents=True, exist_ok=True)
    inputs_path = work / "inputs.jsonl"
    inputs_path.write_text("".join(json.dumps(i.to_dict(), sort_keys=True) + "\n" for i in inputs))
    split_builder = split_builder_lib.SplitBuilder(
        split_dict=builder.info.splits, features=builder.info.features, dataset_size=builder.info.dataset_size,
        max_examples_per_split=download_config.max_examples_per_split, beam_options=download_config.beam_options,
        beam_runner=download_config.beam_runner, shard_config=download_config.get_shard_config(),
        example_writer=builder._example_writer(), ignore_duplicates=download_config.ignore_duplicates)
    with split_builder.maybe_beam_pipeline() as proxy:
        with deterministic_serializer_for_tfds():  # the writers TFDS makes below pickle this serializer
            out = split_builder.beam_pipeline | "GenerateExamples" >> GenerateExamples(
                os.fspath(inputs_path), builder.builder_config.segment, os.fspath(work / "tally.pkl"))
            _ = (out["records"] | "RecordsToJson" >> beam.Map(json.dumps, sort_keys=True)
                 | "WriteRecords" >> beam.io.WriteToText(os.fspath(work / "records"), file_name_suffix=".jsonl"))
            parts = out["examples"] | "BySplit" >> beam.Partition(_split_index, len(SPLITS))
            futures = [split_builder.submit_split_generation(
                split_name=s, generator=parts[SPLITS.index(s)] | f"Key_{s}" >> beam.Map(_key_example),
                filename_template=builder._get_filename_template(split_name=s),
                disable_shuffling=builder.info.disable_shuffling, nondeterministic_order=False) for s in declared]
    builder._process_pipeline_result(pipeline_result=proxy.result)
    return [f.result() for f in futures]


def _load_tally(work) -> Tally | None:
    path = work / "tally.pkl"
    return pickle.loads(path.read_bytes()) if path.exists() else None


def _load_records(work) -> list[dict]:
    records = []
    for path in sorted(work.glob("records*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def _drop_partial_shards(builder) -> None:
    """Files a failed attempt's writers left in the (temporary) version dir."""
    for path in epath.Path(os.fspath(builder.data_dir)).glob(f"{builder.name}-*"):
        path.unlink()
