"""Placeholders for torchvision names that AudioSR, timm and CLAP import but never call on the SR path."""


def make_placeholder(module: str, name: str) -> type:
    """A class that imports fine but raises if anything tries to use it."""

    def _fail(*_args, **_kwargs):
        raise NotImplementedError(
            f"{module}.{name} is a stub: torchvision is not installed in the AudioSR reference venv "
            "(tools/reference/stubs/torchvision)")

    return type(name, (), {"__init__": _fail, "__call__": _fail, "__module__": module})


def module_getattr(module: str):
    """A PEP 562 module `__getattr__` that hands out placeholders for any public name."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return make_placeholder(module, name)

    return __getattr__
