from . import functional  # noqa: F401
from .._placeholder import module_getattr
from .functional import InterpolationMode  # noqa: F401

__getattr__ = module_getattr("torchvision.transforms")
