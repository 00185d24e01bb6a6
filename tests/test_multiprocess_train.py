"""Training under several JAX processes equals training in one: for each stage, two steps as 2 processes ×
4 fake CPU devices (``python -m audiosr_jax.launch ... train.py --multihost``, gloo collectives) and as
1 process × 8 devices (``train()`` in this process), same config, seed and global batches; the loss curve
(TensorBoard, written by process 0) and every trained parameter group (the last checkpoint, which both
processes write their shards of) agree to the float32 tolerances below. One mesh kind per stage:

* vae: data 8 (pure data parallelism across both processes);
* vocoder: data 4 × tensor 2 (tensor-parallel kernels; the MSD's grouped convs under tensor > 1);
* ldm: fsdp 8 spanning both processes, built as ``mesh`` fsdp 4 (within a process) × ``mesh_dcn`` fsdp 2
  (across processes, ``create_hybrid_device_mesh`` with the process as the "slice"); the run's mesh log
  line shows the DCN factor's devices on different processes.

Each run reads its own batches through its own loader: the 1-process run's equality with the 2-process job
also proves that a global batch holds the same rows in the same places whatever the process count (the VAE
and LDM steps draw per-row noise, so a reordered batch gives another loss).

The networks are the tiny presets cut to one of each block kind; crops are minimal. The reference runs while
the launcher job compiles. Every run uses the session's persistent XLA cache (``AUDIOSR_JAX_CACHE``, which
conftest.py sets to a temporary folder unless it is set): point it at a kept folder and a rerun skips
compilation (measured: 5 min 22 s cold, 2 min 40 s warm, 2 shared cores). (``JAX_SHARE_BINARY_BETWEEN_HOSTS``,
one process compiling for both, deadlocked here on CPU in jax 0.10.2: process 1 waited for a program that
process 0 never published.)
"""

import ast
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from audiosr_jax.training.stages import stage_class
from audiosr_jax.training.weights import read_trained_params

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "fixtures" / "corpus_slice"
STEPS = 2
BATCH = 8
# float32 reduction order only (another split of the sums over devices and processes). Measured worst over
# the three stages, two steps, 2×4 vs 1×8: loss 1.7e-7 relative (vae), params 1.2e-7 absolute (vae; vocoder
# 3.0e-8, ldm 6.0e-8); these are ~10x that (docs/training.md §Several processes).
LOSS_RTOL = 2e-6
PARAM_RTOL, PARAM_ATOL = 1e-5, 1.2e-6

# the mesh of each stage: (1-process mesh, 2-process mesh, 2-process mesh_dcn)
MESHES = {
    "vae": ((("data", 8), ("fsdp", 1), ("tensor", 1)), (("data", 8), ("fsdp", 1), ("tensor", 1)), ()),
    "vocoder": ((("data", 4), ("fsdp", 1), ("tensor", 2)), (("data", 4), ("fsdp", 1), ("tensor", 2)), ()),
    "ldm": ((("data", 1), ("fsdp", 8), ("tensor", 1)), (("data", 1), ("fsdp", 4), ("tensor", 1)),
            (("fsdp", 2),)),
}


def get_config(arg: str):
    """ml_collections entry point (``--config=tests/test_multiprocess_train.py:STAGE,RUN``, RUN "1x8" or
    "2x4"): the stage's tiny preset cut to one of each block kind, on that run's mesh. The data set and the
    VAE come as ``--config.data.dataset_dir`` / ``--config.ldm.vae_from`` overrides."""
    stage, run = arg.split(",")
    c = _stage_config(stage)
    single, multi, dcn = MESHES[stage]
    c.mesh = single if run == "1x8" else multi
    c.mesh_dcn = () if run == "1x8" else dcn
    c.train.update(total_steps=STEPS, batch_size=BATCH, log_every=1, eval_every=0, save_every=STEPS,
                   async_checkpoints=False)
    # SGD (momentum 0.9) on clipped gradients: updates linear in the gradient, so the float32 noise of another
    # reduction order stays noise. Adam would turn the noise on an analytically zero gradient (a bias before a
    # GroupNorm) into a ±lr step (measured: 4e-3 on VAE biases after two steps).
    for group in ([c.optim] if "lr" in c.optim else [c.optim[g] for g in c.optim]):
        group.update(optimizer="sgd", b1=0.9, lr=1e-2, clip_norm=1.0, warmup_steps=0, schedule="constant")
    return c


def _stage_config(stage: str):
    """The tiny preset of ``stage`` with the smallest widths and crops that still run every module."""
    from audiosr_jax.configs import ldm, vae, vocoder

    if stage == "vae":
        c = vae.get_config("tiny")
        c.model.vae.ch_mult = [1, 1]  # one downsample
        c.data.crop_samples = 7_680   # 16 frames: a 2-layer PatchGAN fits
        c.vae.disc.n_layers = 2
    elif stage == "vocoder":
        c = vocoder.get_config("tiny")
        c.data.crop_samples = 4_800
        c.model.vocoder.update(resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])
        # MPD (one period), MSD (two scales: the pooling between them), MRD (one resolution)
        c.vocoder_train.disc.update(periods=[2], scales=2, resolutions=[[512, 50, 240]])
    else:
        c = ldm.get_config("tiny")    # two UNet levels with attention; the frozen VAE is the tiny checkpoint
        c.data.crop_samples = 7_680
    return c


# ------------------------------------------------------------------------------------------------ helpers


def _scalars(workdir, tag: str) -> dict[int, float]:
    """{step: value} of one TensorBoard scalar, read from the event files' records (length, crc, Event
    proto, crc) with tensorboardX's protos (no TensorFlow or tensorboard needed)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(Path(workdir, "tb").glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
    return out


def _params(workdir, stage: str) -> dict:
    """{group: params} of every trained group in the workdir's last checkpoint (host numpy)."""
    return {g: read_trained_params(str(workdir), g, prefer_ema=False)[0] for g in stage_class(stage).groups}


def _overrides(dataset, vae_dir) -> list[str]:
    return [f"--config.data.dataset_dir={dataset}", f"--config.ldm.vae_from={vae_dir}"]


def _env(**extra) -> dict:
    """The launcher's environment: ours (AUDIOSR_JAX_CACHE included) plus the repo on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                **extra)


def _launch(stage: str, workdir, dataset, vae_dir, log_path) -> subprocess.Popen:
    """Start the 2 × 4 job (output to ``log_path``)."""
    # one Eigen thread per fake device: 8 device threads already fill 2 cores (measured ~1.5-2x faster steps)
    env = _env(XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false"]).strip())
    extra = _overrides(dataset, vae_dir) if stage == "ldm" else [f"--config.data.dataset_dir={dataset}"]
    args = [sys.executable, "-m", "audiosr_jax.launch", "--processes", "2", "--devices-per-process", "4",
            "--timeout", "540", "--", str(ROOT / "train.py"), "--multihost",
            f"--config={Path(__file__).resolve()}:{stage},2x4", f"--workdir={workdir}", *extra]
    with open(log_path, "w") as log:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _reference(stage: str, workdir, dataset, vae_dir) -> None:
    """The 1 × 8 run, in this process, with its own loader."""
    from audiosr_jax.training.loop import train

    c = get_config(f"{stage},1x8")
    c.data.dataset_dir = str(dataset)
    if stage == "ldm":
        c.ldm.vae_from = str(vae_dir)
    assert train(c, str(workdir), progress=False)["step"] == STEPS


def _max_differences(a: dict, b: dict) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max(|b|, 1e-6)) over every leaf."""
    diffs = [np.abs(np.asarray(x) - np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    rel = [d / np.maximum(np.abs(np.asarray(y)), 1e-6) for d, y in zip(diffs, jax.tree.leaves(b))]
    return max(float(d.max()) for d in diffs), max(float(r.max()) for r in rel)


def _mesh_line(log_text: str) -> tuple[dict, np.ndarray]:
    """(mesh shape, process of each device) from process 0's mesh log line."""
    m = re.search(r"^\[0\] .*mesh (\{.*?\}) over 2 process\(es\); process of each device: (\[.*\])$", log_text,
                  re.MULTILINE)
    assert m, log_text[-3000:]
    return ast.literal_eval(m.group(1)), np.asarray(ast.literal_eval(m.group(2)))


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from audiosr_jax.data.segments import SegmentConfig, build_dataset

    return build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, tmp_path_factory.mktemp("tfds"),
                         config=SegmentConfig(segment_seconds=0.32, validation_fraction=0.3))


@pytest.fixture(scope="module", autouse=True)
def _xla_cache():
    from audiosr_jax.runtime import enable_compilation_cache

    enable_compilation_cache()


# ------------------------------------------------------------------------------------------------ tests


def _two_processes_equal_one(stage, tmp_path, dataset, vae_dir) -> str:
    """Run both, compare losses and params (asserts); returns the launcher's output."""
    t0 = time.monotonic()
    proc = _launch(stage, tmp_path / "2x4", dataset, vae_dir, tmp_path / "2x4.log")
    try:
        _reference(stage, tmp_path / "1x8", dataset, vae_dir)
        t1 = time.monotonic() - t0
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t2 = time.monotonic() - t0
    out = (tmp_path / "2x4.log").read_text()
    assert rc == 0, out[-5000:]
    ref_loss, loss = _scalars(tmp_path / "1x8", "train/loss"), _scalars(tmp_path / "2x4", "train/loss")
    assert sorted(loss) == sorted(ref_loss) == list(range(1, STEPS + 1)), (loss, ref_loss)
    ref_params, params = _params(tmp_path / "1x8", stage), _params(tmp_path / "2x4", stage)
    abs_p, rel_p = _max_differences(params, ref_params)
    loss_rel = max(abs(loss[s] - ref_loss[s]) / abs(ref_loss[s]) for s in loss)
    speed = {run: _scalars(tmp_path / run, "train/steps_per_s").get(STEPS) for run in ("1x8", "2x4")}
    print(f"\n{stage}: loss {[ref_loss[s] for s in sorted(ref_loss)]} vs {[loss[s] for s in sorted(loss)]}, "
          f"max loss rel diff {loss_rel:.2e}; params max abs diff {abs_p:.2e}, max rel {rel_p:.2e}; "
          f"1x8 done at {t1:.0f} s, 2x4 at {t2:.0f} s (concurrent); step {STEPS}: {speed} steps/s")
    np.testing.assert_allclose([loss[s] for s in sorted(loss)], [ref_loss[s] for s in sorted(ref_loss)],
                               rtol=LOSS_RTOL)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(x, y, rtol=PARAM_RTOL, atol=PARAM_ATOL)
    return out


@pytest.mark.slow
def test_vae_data_parallel_two_processes_equal_one(tmp_path, dataset):
    _two_processes_equal_one("vae", tmp_path, dataset, None)


@pytest.mark.slow
def test_vocoder_tensor_parallel_two_processes_equal_one(tmp_path, dataset):
    _two_processes_equal_one("vocoder", tmp_path, dataset, None)


@pytest.mark.slow
def test_ldm_fsdp_across_processes_with_dcn_mesh_equals_one(tmp_path, dataset, tiny_checkpoint_dir):
    out = _two_processes_equal_one("ldm", tmp_path, dataset, tiny_checkpoint_dir)
    shape, procs = _mesh_line(out)
    assert shape == {"data": 1, "fsdp": 8, "tensor": 1}
    # fsdp = 4 (ICI) x 2 (DCN): the DCN factor is the outer one, one process each; the ICI factor stays in one
    along_fsdp = procs[0, :, 0]
    assert list(along_fsdp) == [0, 0, 0, 0, 1, 1, 1, 1], procs.tolist()
    assert all(along_fsdp[i] != along_fsdp[i + 4] for i in range(4))


def test_batch_that_does_not_span_the_processes_is_refused_up_front(tmp_path, dataset):
    """mesh_dcn on tensor puts every batch shard on both processes, which read different rows: each process
    stops before compiling or reading anything, with one line naming the setting (exit status 2)."""
    args = [sys.executable, "-m", "audiosr_jax.launch", "--processes", "2", "--devices-per-process", "4",
            "--timeout", "240", "--", str(ROOT / "train.py"), "--multihost",
            f"--config={Path(__file__).resolve()}:vae,2x4", f"--workdir={tmp_path / 'run'}",
            f"--config.data.dataset_dir={dataset}", "--config.mesh=(('data', 4), ('fsdp', 1), ('tensor', 1))",
            "--config.mesh_dcn=(('tensor', 2),)"]
    done = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error: " in line]
    expected = ("error: train.batch_size 8: mesh {'data': 4, 'fsdp': 1, 'tensor': 2} puts batch shard 0 (of 4, on "
                "axes ('data', 'fsdp')) on processes [0, 1]; the batch axes must span the 2 processes (put the "
                "cross-process mesh_dcn factor on data or fsdp)")
    # every process that got as far as printing (the launcher stops the other on the first exit)
    assert errors and {line.split("] ", 1)[1] for line in errors} == {expected}, errors
    assert not (tmp_path / "run" / "checkpoints").exists()
