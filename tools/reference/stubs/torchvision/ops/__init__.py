from . import misc  # noqa: F401
from .._placeholder import module_getattr

__getattr__ = module_getattr("torchvision.ops")
