"""Build the ``audio_segments`` training dataset (TFDS, ArrayRecord) from folders of audio files.

    python data/build.py --corpus out/corpus --data_dir out/tfds
    python data/build.py --source music=DIR --source speech=DIR2 --data_dir out/tfds \
        [--segment_seconds 10.24 --tail pad|drop --channels mix|split --validation_fraction 0.1 ...]
    python data/build.py --manifest files.csv --data_dir out/tfds --beam \
        [--beam_options="--direct_num_workers=2 --direct_running_mode=multi_processing"]

``--source DOMAIN=PATH`` (repeatable; DOMAIN in speech, music, effects; PATH a folder searched recursively, or a
file). ``--corpus DIR`` adds ``DIR/speech``, ``DIR/music`` and ``DIR/effects`` where present (the layout of
``data/build_corpus.py``). ``--manifest FILE`` (repeatable; ``.csv``, ``.jsonl`` or the corpus builder's
``manifest.json``; a path or URI) lists files with domain, licence and an optional bandwidth
(``audiosr_jax/data/manifest.py``). ``--beam`` runs the same build as an Apache Beam pipeline (same dataset):
``--beam_options`` are the runner's own options (default: DirectRunner, one worker process per core; Dataflow,
Flink or Spark by their options, see data/README.md). Writes ``<data_dir>/audio_segments/<config name>/1.0.0/`` and prints its path; the
build report (skipped files with reasons, counts) is ``build_report.json`` there. Bad files are skipped and
listed; a user error (no audio in a folder, no segment fits, existing build without --overwrite) prints one
line and exits with status 2. ``--overwrite`` replaces a previous build of the same config only once the new
one is complete (a failed or interrupted build leaves it intact), and never a folder that is not such a build.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from audiosr_jax.errors import UserError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from audiosr_jax.data.segments import SegmentConfig

    d = SegmentConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--source", action="append", default=[], metavar="DOMAIN=PATH",
                    help="a folder (or file) of audio tagged speech, music or effects; repeatable")
    ap.add_argument("--corpus", action="append", default=[], metavar="DIR",
                    help="a folder with speech/, music/, effects/ subfolders (e.g. out/corpus); repeatable")
    ap.add_argument("--manifest", action="append", default=[], metavar="FILE",
                    help="a .csv / .jsonl / .json manifest of files (path or uri, domain, licence, bandwidth_hz); "
                         "repeatable")
    ap.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
    ap.add_argument("--segment_seconds", type=float, default=d.segment_seconds)
    ap.add_argument("--hop_seconds", type=float, default=None, help="segment hop (default: segment length)")
    ap.add_argument("--tail", choices=("pad", "drop"), default=d.tail)
    ap.add_argument("--min_tail_seconds", type=float, default=d.min_tail_seconds)
    ap.add_argument("--channels", choices=("mix", "split"), default=d.channels)
    ap.add_argument("--silence_dbfs", type=float, default=d.silence_dbfs)
    ap.add_argument("--validation_fraction", type=float, default=d.validation_fraction)
    ap.add_argument("--min_sample_rate", type=int, default=d.min_sample_rate)
    ap.add_argument("--max_channels", type=int, default=d.max_channels)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default min(4, cpus))")
    ap.add_argument("--beam", action="store_true", help="build with Apache Beam (pip install '.[beam]')")
    ap.add_argument("--beam_options", default="", metavar="ARGS",
                    help="Beam pipeline options as one string, written with '=': "
                         "--beam_options=\"--runner=DataflowRunner --project=P ...\" "
                         "(default: DirectRunner, multi_processing, one worker per core)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing build of the same config, once the new one is complete")
    ap.add_argument("--quiet", action="store_true", help="only warnings (skipped files) and the result")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # TFDS's own INFO lines repeat ours
    except ImportError:
        pass
    import tensorflow_datasets as tfds

    from audiosr_jax.data.segments import (
        DOMAINS,
        DatasetError,
        SegmentConfig,
        build_dataset,
        read_build_report,
    )

    tfds.disable_progress_bar()
    try:
        sources = []
        for spec in a.source:
            domain, sep, path = spec.partition("=")
            if not sep or not path:
                raise DatasetError(f"--source expects DOMAIN=PATH, got {spec!r}")
            sources.append((domain, Path(path)))
        for corpus in a.corpus:
            found = [(dom, Path(corpus) / dom) for dom in DOMAINS if (Path(corpus) / dom).is_dir()]
            if not found:
                raise DatasetError(f"{corpus}: no {'/, '.join(DOMAINS)}/ subfolder (--corpus expects the "
                                   f"layout of data/build_corpus.py)")
            sources += found
        if not sources and not a.manifest:
            raise DatasetError("nothing to build: give --source DOMAIN=PATH, --corpus DIR and/or --manifest FILE")
        if a.beam_options and not a.beam:
            raise DatasetError("--beam_options needs --beam")
        config = SegmentConfig(
            segment_seconds=a.segment_seconds, tail=a.tail, min_tail_seconds=a.min_tail_seconds,
            channels=a.channels, silence_dbfs=a.silence_dbfs, validation_fraction=a.validation_fraction,
            min_sample_rate=a.min_sample_rate, max_channels=a.max_channels, hop_seconds=a.hop_seconds)
        t0 = time.perf_counter()
        version_dir = build_dataset(sources, a.data_dir, config=config, overwrite=a.overwrite, workers=a.workers,
                                    manifests=a.manifest, beam_options=a.beam_options if a.beam else None)
        dt = time.perf_counter() - t0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = read_build_report(version_dir)
    print(f"{version_dir}: {rep['files_used']}/{rep['files_seen']} files used, {rep['files_skipped']} skipped, "
          f"segments {rep['segments']}, {rep['segments_dropped_silent']} silent dropped, "
          f"{rep['tails_dropped']} tails dropped ({dt:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
