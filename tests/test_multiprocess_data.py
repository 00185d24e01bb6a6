"""The training loader on 2 real JAX processes (``python -m audiosr_jax.launch``, 2 × 2 fake CPU devices): each
process reads its own share (its contiguous half of each global batch), and one epoch shows every
example exactly once over both processes, less the last partial global batch, which is dropped (exactly the
examples at the shuffled positions past the last whole global batch); a process's iterator state saved the
way the Checkpointer saves it (an ``ocp.args.Composite`` item ``data_iter`` of an orbax CheckpointManager
step) and restored in fresh processes gives the batches the uninterrupted iteration gave.

This module is also the script the launcher runs (``__main__``): it iterates the loader and writes what its
process saw to ``<out>/<mode>-<process>.json``. Every launcher run has ``--timeout``.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "fixtures" / "corpus_slice"
GLOBAL_BATCH = 8  # 4 rows per process, 2 per device
SEED = 3
SAVE_AT, AFTER = 3, 4  # batches before the saved state, and compared after it (across the epoch boundary)
TIMEOUT_S = 120


def _loader_config(num_epochs, worker_count: int):
    from audiosr_jax.data.loader import LoaderConfig

    return LoaderConfig(global_batch_size=GLOBAL_BATCH, crop_samples=4_800, seed=SEED, shuffle=True,
                        num_epochs=num_epochs, worker_count=worker_count, lowpass="device")


def _summary(local: dict) -> list[dict]:
    """One process's rows of a batch: record index, epoch, and a digest of every other field."""
    import numpy as np

    rows = []
    for i in range(len(local["index"])):
        digest = hashlib.sha1()
        for key in sorted(local):
            value = local[key]
            for k in sorted(value) if isinstance(value, dict) else [None]:
                digest.update(np.ascontiguousarray((value[k] if k else value)[i]).tobytes())
        rows.append({"index": int(local["index"][i]), "epoch": int(local["epoch"][i]), "digest": digest.hexdigest()})
    return rows


def _child(mode: str, dataset: str, out: str, worker_count: int) -> None:
    """What one launched process does. ``epoch``: every batch of one epoch; ``save``: SAVE_AT batches, the
    iterator state saved, then AFTER more; ``restore``: the saved state restored, then AFTER batches. Each
    batch is also assembled into global arrays (``Loader.to_global``), as training does."""
    from audiosr_jax.runtime import initialize_distributed

    initialize_distributed()
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh

    from audiosr_jax.data.loader import make_loader
    from audiosr_jax.data.segments import open_split

    if mode == "interleaved":
        # batch over (data, fsdp) with the process as the inner axis: each process holds every other block of rows
        mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2).T, ("data", "fsdp"))
        loader = make_loader(open_split(dataset, "train"), _loader_config(None, 0), mesh, ("data", "fsdp"))
        from jax.experimental import multihost_utils

        rows = [multihost_utils.process_allgather(loader.to_global(loader.next_local())["index"], tiled=True)
                for _ in range(3)]
        Path(out, f"{mode}-{jax.process_index()}.json").write_text(json.dumps([r.tolist() for r in rows]))
        return
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    loader = make_loader(open_split(dataset, "train"), _loader_config(1 if mode == "epoch" else None, worker_count),
                         mesh, ("data",))
    manager = ocp.CheckpointManager(Path(out) / "checkpoints")
    if mode == "restore":
        manager.restore(SAVE_AT, args=ocp.args.Composite(data_iter=loader.restore_args()))
    batches = []
    n = {"epoch": loader.num_batches, "save": SAVE_AT + AFTER, "restore": AFTER}[mode]
    for b in range(n):
        if mode == "save" and b == SAVE_AT:
            manager.save(SAVE_AT, args=ocp.args.Composite(data_iter=loader.checkpoint_args()), force=True)
            manager.wait_until_finished()
        local = loader.next_local()
        assert loader.to_global(local)["index"].shape == (GLOBAL_BATCH,)
        batches.append(_summary(local))
    if mode == "epoch":
        try:
            loader.next_local()
            raise AssertionError("the epoch has more batches than num_batches")
        except StopIteration:
            pass
    manager.close()
    loader.close()
    Path(out, f"{mode}-{jax.process_index()}.json").write_text(json.dumps(batches))


# ------------------------------------------------------------------------------------------------ helpers


def _launch(mode: str, dataset, out, worker_count: int = 0) -> list[list[list[dict]]]:
    """Run ``mode`` as 2 processes × 2 devices; [process][batch][row] summaries."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    args = [sys.executable, "-m", "audiosr_jax.launch", "--processes", "2", "--devices-per-process", "2",
            "--timeout", str(TIMEOUT_S), "--", str(Path(__file__).resolve()), mode, str(dataset), str(out),
            str(worker_count)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S + 60,
                          check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return [json.loads(Path(out, f"{mode}-{p}.json").read_text()) for p in range(2)]


def _shuffled_order(n: int) -> list[int]:
    """The record index at each position of the loader's one-epoch stream (its shuffle, in one process)."""
    import grain

    ds = grain.MapDataset.range(n).shuffle(seed=SEED)
    return [int(ds[i]) for i in range(n)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from audiosr_jax.data.segments import SegmentConfig, build_dataset

    return build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, tmp_path_factory.mktemp("tfds"),
                         config=SegmentConfig(segment_seconds=0.32, validation_fraction=0.3))


# ------------------------------------------------------------------------------------------------ tests


def test_one_epoch_over_two_processes_sees_every_example_once(dataset, tmp_path):
    from audiosr_jax.data.segments import open_split

    n = len(open_split(str(dataset), "train"))
    whole = n // GLOBAL_BATCH
    assert n % GLOBAL_BATCH, "the split must leave a partial last batch for this test"
    seen = _launch("epoch", dataset, tmp_path)
    ids = [[row["index"] for batch in batches for row in batch] for batches in seen]
    assert [len(batches) for batches in seen] == [whole, whole]
    assert all(row["epoch"] == 0 for batches in seen for batch in batches for row in batch)
    assert not set(ids[0]) & set(ids[1]) and all(len(set(i)) == len(i) for i in ids)
    order = _shuffled_order(n)
    dropped = order[whole * GLOBAL_BATCH:]  # the last partial global batch
    assert sorted(ids[0] + ids[1]) == sorted(set(range(n)) - set(dropped))
    # process p holds the contiguous half p of each global batch's stream positions, in order
    half = GLOBAL_BATCH // 2
    for p in range(2):
        assert ids[p] == [order[s * GLOBAL_BATCH + p * half + j] for s in range(whole) for j in range(half)]


@pytest.mark.parametrize("worker_count", [0, 1], ids=["in-process", "1-worker"])
def test_iterator_state_restored_in_fresh_processes_continues_the_same_batches(dataset, tmp_path, worker_count):
    uninterrupted = _launch("save", dataset, tmp_path, worker_count)
    resumed = _launch("restore", dataset, tmp_path, worker_count)
    for p in range(2):
        assert resumed[p] == uninterrupted[p][SAVE_AT:], p
        assert len({row["index"] for batch in uninterrupted[p] for row in batch}) > 1
    # the compared batches cross into the second epoch
    assert {row["epoch"] for p in range(2) for batch in resumed[p] for row in batch} == {0, 1}
    assert sorted(f.name for f in (tmp_path / "checkpoints" / str(SAVE_AT) / "data_iter").iterdir()
                  if f.name.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]


def test_a_mesh_that_interleaves_processes_along_the_batch_gives_the_one_process_rows(dataset, tmp_path):
    """data × fsdp with the process innermost (as `mesh` data × `mesh_dcn` fsdp): each process reads the blocks
    its devices hold, and the assembled global batch is the stream in order, as in one process."""
    from audiosr_jax.data.segments import open_split

    order = _shuffled_order(len(open_split(str(dataset), "train")))
    seen = _launch("interleaved", dataset, tmp_path)
    assert seen[0] == seen[1]  # both processes see the same global arrays
    assert seen[0] == [order[s * GLOBAL_BATCH:(s + 1) * GLOBAL_BATCH] for s in range(3)]


if __name__ == "__main__":  # a process of the launched job: MODE DATASET OUT WORKERS
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
