"""The Python API: `AudioSR`, a loaded model that super-resolves arrays and files to 48 kHz.

    from audiosr_jax import AudioSR
    sr = AudioSR.from_pretrained("basic")            # or "speech", a checkpoint directory, a .bin/.pth file
    y = sr(x, 16000, steps=50, guidance=3.5, seed=42)  # x: [N] or [C, N] at any rate → [N'] / [C, N'] at 48 kHz
    ys = sr.batch([x1, x2], [16000, 44100])
    sr.super_resolve_files(["music/"], "out/")       # what sample.py runs

Arrays go through the same engine as files (`batch.run_arrays`): the same windows for long audio, the same
noise per (seed, channel, window), so `sr(x, rate)` equals sample.py's output for that audio written to a
file (up to the 24-bit rounding of the file). Compiled programs are cached in memory per shape and on disk
(`runtime.enable_compilation_cache`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from audiosr_jax.errors import UserError

__all__ = ["AudioSR", "RELEASE_SAMPLING"]

# the official tool's sampling, used where neither the call nor the checkpoint says otherwise
RELEASE_SAMPLING = {"steps": 50, "guidance": 3.5, "eta": 1.0, "sampler": "ddim"}


class AudioSR:
    """A model ready to sample: weights placed (replicated) on a mesh of this process's devices."""

    def __init__(self, weights, mesh=None):
        """weights: `checkpoint.AudioSRWeights` (resident, or lazy for low-memory stage-by-stage runs);
        mesh: a 1-D ("data",) mesh (default: every local device)."""
        from audiosr_jax import runtime

        self.weights = weights
        self.mesh = mesh if mesh is not None else runtime.local_mesh()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "basic", *, devices: int = 0, low_memory: bool = False,
                        cache_dir: str | None = None) -> "AudioSR":
        """Load "basic" or "speech" (the released weights, fetched from the hub and converted once into
        `cache_dir`, default ~/.cache/audiosr_jax), a converted checkpoint directory, or a PyTorch checkpoint
        file (.bin/.pth/.ckpt/.safetensors, converted once). devices: use the first N local devices (0 = all);
        low_memory: hold one network at a time (about half the peak memory)."""
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from audiosr_jax import memory, runtime
        from audiosr_jax.inference.checkpoint import load_weights
        from audiosr_jax.inference.pretrained import resolve_checkpoint

        runtime.enable_compilation_cache()
        mesh = runtime.local_mesh(devices)
        directory = resolve_checkpoint(model, cache_dir=cache_dir)
        weights = load_weights(directory, sharding=NamedSharding(mesh, P()), lazy=low_memory)
        memory.release_free_memory()  # the restore's transient buffers
        return cls(weights, mesh)

    def options(self, steps: int | None = None, guidance: float | None = None, eta: float | None = None,
                sampler: str | None = None, dtype: str = "float32"):
        """`pipeline.SamplingOptions`, checked against this model's schedule (one-line UserError). What is None
        comes from the checkpoint's own "sampling" settings (a distilled student's step count and sampler),
        else the release's: 50 steps, guidance 3.5, eta 1.0, DDIM."""
        from audiosr_jax.diffusion import sampling
        from audiosr_jax.inference.pipeline import SamplingOptions

        given = {"steps": steps, "guidance": guidance, "eta": eta, "sampler": sampler}
        chosen = {**RELEASE_SAMPLING, **self.weights.sampling, **{k: v for k, v in given.items() if v is not None}}
        steps, guidance, eta, sampler = (chosen[k] for k in ("steps", "guidance", "eta", "sampler"))
        d = self.weights.diffusion
        if not 1 <= steps <= d.num_timesteps:
            raise UserError(f"steps={steps}: this model was trained with {d.num_timesteps} timesteps")
        try:
            sampling.check_options(d, sampler, steps)  # per objective: diffusion or flow/bridge samplers
        except ValueError as e:
            raise UserError(f"sampler={sampler} steps={steps}: {e}") from None
        return SamplingOptions(steps, guidance, eta, sampler, dtype)

    def _config(self, seed: int, batch_size: int, max_channels: int, match_loudness: bool,
                lowpass: str = "official", **sampling):
        from audiosr_jax.inference.batch import BatchConfig

        if not 0 <= seed < 2**32:
            raise UserError(f"seed must be in [0, 2**32 - 1], got {seed}")
        return BatchConfig(options=self.options(**sampling), seed=seed, batch_per_device=batch_size,
                           max_channels=max_channels, match_loudness=match_loudness, lowpass=lowpass)

    def __call__(self, audio: np.ndarray, sample_rate: int, *, seed: int = 42, batch_size: int = 1,
                 max_channels: int = 2, match_loudness: bool = False, **sampling) -> np.ndarray:
        """Super-resolve one signal. audio: float or PCM-integer numpy [N] (mono) or [C, N], any length, at
        `sample_rate` Hz. Returns float32 at 48 kHz, [N'] or [C, N'] like the input, N' = round(N·48000/rate).
        sampling: steps, guidance, eta, sampler (default: the checkpoint's own, else 50, 3.5, 1.0, "ddim"),
        dtype ("float32"), lowpass
        ("official": the condition's filter family as the official tool draws it for `seed`; or "butter",
        "cheby1", "ellip", "bessel").
        Raises AudioError (one line) for unusable audio."""
        return self.batch([audio], sample_rate, seed=seed, batch_size=batch_size, max_channels=max_channels,
                          match_loudness=match_loudness, **sampling)[0]

    def batch(self, audios: Sequence[np.ndarray], sample_rate: int | Sequence[int], *, seed: int = 42,
              batch_size: int = 1, max_channels: int = 2, match_loudness: bool = False, progress: bool = False,
              **sampling) -> list[np.ndarray]:
        """Super-resolve many signals together (windows batched over every device). sample_rate: one rate
        for all, or one per signal. Returns one 48 kHz array per input, shaped like it ([N'] or [C, N'])."""
        from audiosr_jax import audio
        from audiosr_jax.inference.batch import run_arrays

        rates = [sample_rate] * len(audios) if np.ndim(sample_rate) == 0 else list(sample_rate)
        if len(rates) != len(audios):
            raise UserError(f"{len(audios)} signals but {len(rates)} sample rates")
        cfg = self._config(seed, batch_size, max_channels, match_loudness, **sampling)
        for i, (x, rate) in enumerate(zip(audios, rates)):  # unusable audio raises AudioError here, by index
            audio.check_input_array(x, int(rate), f"audio array {i}", max_channels)
        results, outputs = run_arrays(self.weights, list(zip(audios, rates)), cfg, mesh=self.mesh, progress=progress)
        for r in results:
            if r.status != "ok":
                raise UserError(r.reason)
        return [y[0] if np.ndim(x) == 1 else y for x, y in zip(audios, outputs)]

    def super_resolve_files(self, inputs: Sequence[str], output: str, *, overwrite: bool = False,
                            report: str | None = None, seed: int = 42, batch_size: int = 1, max_channels: int = 2,
                            match_loudness: bool = False, progress: bool = True, **sampling):
        """Files, folders, globs or @lists → `output` (a file for one input with an audio extension, else a
        folder mirroring the inputs, with a report). Returns `files.FilesOutcome` (per-file results, whether
        the run stopped early, the report written). Bad files are reported, never raised."""
        from audiosr_jax.inference.files import plan_files, run_files

        cfg = self._config(seed, batch_size, max_channels, match_loudness, **sampling)
        plan = plan_files(list(inputs), output, overwrite=overwrite, report=report, max_channels=max_channels)
        return run_files(self.weights, plan, dataclasses.replace(cfg, overwrite=overwrite), mesh=self.mesh,
                         progress=progress)
