"""The diffusion settings a UNet was trained with, which inference must reproduce.

A trained UNet only makes sense with the noise schedule (ᾱ table) and the parameterisation of its training
(config.ldm.{schedule, schedule_kwargs, num_timesteps, parameterization}). `DiffusionConfig` carries them from
the LDM run to the inference checkpoint (architecture.json "diffusion"); the defaults are the released
AudioSR model's: unclipped cosine, 1000 steps, v-prediction.

`objective` picks the training/sampling maths: "diffusion" (the ᾱ table above), or "flow" / "bridge" (the
straight-line interpolation of `flow`, with its time sampling, time shift and bridge noise; the schedule and
parameterisation fields are then unused, `num_timesteps` only scales the UNet's time input).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from audiosr_jax.diffusion.flow import check_flow_settings, check_objective
from audiosr_jax.diffusion.parameterization import check_parameterization
from audiosr_jax.diffusion.schedules import make_alphas_cumprod

__all__ = ["DiffusionConfig"]


def _plain(value: Any) -> Any:
    """A JSON/hash-friendly copy of a kwarg value (lists become tuples)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """schedule / schedule_kwargs / num_timesteps: `schedules.make_alphas_cumprod(schedule, num_timesteps,
    **schedule_kwargs)`; parameterization: what the UNet predicts ("v", "eps" or "x0").

    schedule_kwargs may be given as a dict; it is stored as a sorted tuple of (name, value) pairs so the
    config is hashable (it is a static argument of the jitted pipeline). Invalid settings raise ValueError.

    objective: "diffusion" (default), "flow" or "bridge" (`flow` module docstring). flow_time_sampling,
    flow_logit_mean, flow_logit_std: the training time law; flow_time_shift: SD3's shift, at training and on
    the sampling grid; bridge_noise: σ_b of the bridge's start point c + σ_b·ε.
    """

    schedule: str = "cosine"
    schedule_kwargs: tuple = ()
    num_timesteps: int = 1000
    parameterization: str = "v"
    objective: str = "diffusion"
    flow_time_sampling: str = "logit_normal"
    flow_logit_mean: float = 0.0
    flow_logit_std: float = 1.0
    flow_time_shift: float = 1.0
    bridge_noise: float = 0.5

    def __post_init__(self):
        kw = self.schedule_kwargs
        if hasattr(kw, "to_dict"):
            kw = kw.to_dict()
        items = kw.items() if isinstance(kw, Mapping) else kw
        object.__setattr__(self, "schedule_kwargs", tuple(sorted((str(k), _plain(v)) for k, v in items)))
        object.__setattr__(self, "num_timesteps", int(self.num_timesteps))
        for name in _FLOAT_FIELDS:
            object.__setattr__(self, name, float(getattr(self, name)))
        check_parameterization(self.parameterization)
        check_objective(self.objective)
        check_flow_settings(self.flow_time_sampling, self.flow_logit_std, self.flow_time_shift, self.bridge_noise,
                            self.flow_logit_mean)
        _table(self)  # validates the schedule name and kwargs (cached)

    @property
    def kwargs(self) -> dict:
        return dict(self.schedule_kwargs)

    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ (float64 [num_timesteps], read-only, cached)."""
        return _table(self)

    def to_dict(self) -> dict:
        """JSON-ready settings. The objective's keys are written for flow/bridge; for "diffusion" only where they
        differ from the defaults, so a diffusion model's architecture.json reads as it did before they existed."""
        d = {"schedule": self.schedule, "schedule_kwargs": {k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in self.schedule_kwargs},
             "num_timesteps": self.num_timesteps, "parameterization": self.parameterization}
        default = DiffusionConfig()
        for name in _OBJECTIVE_FIELDS:
            if self.objective != "diffusion" or getattr(self, name) != getattr(default, name):
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: Mapping | None) -> DiffusionConfig:
        """Inverse of `to_dict`; None (an architecture.json written before this field existed) and missing
        keys read as the released model's settings. Unknown keys raise ValueError."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ValueError(f"diffusion settings must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown diffusion settings {unknown}")
        return cls(**{k: d[k] for k in names if k in d and d[k] is not None})

    @classmethod
    def from_ldm_config(cls, ldm: Mapping | None) -> DiffusionConfig:
        """From a training config's ``ldm`` section (dict or ConfigDict), ignoring its other keys."""
        ldm = ldm.to_dict() if hasattr(ldm, "to_dict") else dict(ldm or {})
        return cls.from_dict({f.name: ldm[f.name] for f in dataclasses.fields(cls) if f.name in ldm})


_FLOAT_FIELDS = ("flow_logit_mean", "flow_logit_std", "flow_time_shift", "bridge_noise")
_OBJECTIVE_FIELDS = ("objective", "flow_time_sampling") + _FLOAT_FIELDS


@functools.lru_cache(maxsize=32)
def _table(config: DiffusionConfig) -> np.ndarray:
    ac = make_alphas_cumprod(config.schedule, config.num_timesteps, **config.kwargs)
    ac.setflags(write=False)
    return ac
