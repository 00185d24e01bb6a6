"""Minimal torchvision stub for the AudioSR reference environment (no CPU torchvision wheel matches torch 2.13).

Only what is imported at module level by audiosr (`utils.make_grid`), timm (`ops.misc.FrozenBatchNorm2d`,
`transforms`, `datasets`) and the unused CLAP/AudioMAE code exists; anything else is a placeholder that
raises when used.
"""

from . import datasets, ops, transforms, utils  # noqa: F401
from ._placeholder import module_getattr

__version__ = "0.0.0+audiosr-reference-stub"
__getattr__ = module_getattr("torchvision")
