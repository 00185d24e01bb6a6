import enum

from .._placeholder import module_getattr

__getattr__ = module_getattr("torchvision.transforms.functional")


class InterpolationMode(enum.Enum):
    """The real enum's members (timm reads them at import time)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
