"""ml_collections config files (big_vision style), shipped inside the package.

    python train.py --config=audiosr_jax/configs/ldm.py:tiny      # a path, from a checkout
    audiosr-jax-train --config=ldm:tiny                           # a name, after any pip install
"""

from __future__ import annotations

import os

__all__ = ["CONFIG_DIR", "resolve_config_flags"]

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def _resolve(spec: str) -> str:
    """`NAME[.py][:ARGS]` → the packaged file's path with the same `:ARGS`, unless `spec` is an existing file
    (or names none of ours: then it is left for ml_collections to report)."""
    path, sep, args = spec.partition(":")
    if os.path.exists(path):
        return spec
    name = path[:-3] if path.endswith(".py") else path
    candidate = os.path.join(CONFIG_DIR, *name.split("/")) + ".py"
    if os.path.isfile(candidate):
        return candidate + sep + args
    return spec


def resolve_config_flags(argv: list[str], flags: tuple[str, ...] = ("--config", "--grid")) -> list[str]:
    """argv with each `--config=SPEC` / `--grid=SPEC` (or `--config SPEC`) whose SPEC names a packaged config
    (`ldm`, `ldm.py:tiny`, `ablations/schedule_x_param`) replaced by that file's path."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in flags and eq:
            arg = f"{name}={_resolve(value)}"
        elif arg in flags and i + 1 < len(argv):
            out.append(arg)
            i += 1
            arg = _resolve(argv[i])
        out.append(arg)
        i += 1
    return out
