"""Paths that may be URIs: a training workdir or a dataset dir on an object store (``gs://bucket/run``, also
``s3://``, ``az://``, ``hf://``: whatever ``etils.epath`` reads) or on the local disk (a plain path, relative or
absolute, or a ``file://`` URI).

:func:`resolve` turns any of them into an ``etils.epath.Path`` that orbax, tensorstore, TFDS and ArrayRecord
accept: a local path becomes absolute (orbax needs absolute paths); a ``file://`` URI becomes the plain
absolute local path it names (epath has no ``file://`` scheme); any other URI is returned as it is, never
passed to ``os.path`` (``os.path.abspath("gs://b/run")`` is ``<cwd>/gs:/b/run``, a local folder on every
host) and never stat'ed locally. Reading and writing an object store goes through epath, which needs its
file system package at run time (``gcsfs`` for ``gs://``, or TensorFlow's ``tf.io.gfile``).
"""

from __future__ import annotations

import os
import re
import urllib.parse

from etils import epath

from audiosr_jax.errors import UserError

__all__ = ["UnsupportedPathError", "is_remote", "resolve", "scheme"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class UnsupportedPathError(UserError, ValueError):
    """A URI whose scheme no file system here reads (or a ``file://`` URI naming another host)."""


def scheme(path: str | os.PathLike) -> str | None:
    """The URI scheme of ``path`` in lower case ("gs", "file", ...), or None for a plain path."""
    m = _SCHEME.match(os.fspath(path))
    return m.group(1).lower() if m else None


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URI of something other than the local disk (any scheme but ``file``)."""
    return scheme(path) not in (None, "file")


def _file_uri_to_local(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedPathError(f"{uri}: a file:// URI must name this machine (file:///abs/path), not host "
                                   f"{parts.netloc!r}")
    if parts.query or parts.fragment:
        raise UnsupportedPathError(f"{uri}: a file:// URI cannot have a query or fragment")
    return os.path.abspath(urllib.parse.unquote(parts.path) or "/")


def resolve(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: a plain local path made absolute (relative to the current directory), a
    ``file://`` URI as the local absolute path it names, any other URI (``gs://b/x``) untouched.

    Raises UnsupportedPathError for a URI scheme epath cannot open (the message names the supported ones).
    """
    text = os.fspath(path)
    kind = scheme(text)
    if kind is None:
        return epath.Path(os.path.abspath(text))
    if kind == "file":
        return epath.Path(_file_uri_to_local(text))
    text = kind + text[len(kind):]  # schemes are case-insensitive; epath, tensorstore know them in lower case
    try:
        return epath.Path(text)
    except (KeyError, NotImplementedError):  # epath has no file system registered for this scheme
        raise UnsupportedPathError(f"{text}: unsupported URI scheme {kind}:// (use a local path, file://, gs://, "
                                   f"s3://, az:// or hf://)") from None
