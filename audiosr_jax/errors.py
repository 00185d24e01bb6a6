"""Errors a user can cause (bad file, bad checkpoint, bad flag).

Command-line entry points catch `UserError` and print its one-line message (which names the file and the
problem) and exit with status 2, never a traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""


class AudioError(UserError):
    """An input audio file cannot be used (unreadable, empty, non-finite, silent, bad rate, ...)."""


class CheckpointError(UserError):
    """A checkpoint path is missing, corrupt, truncated, or holds a different model."""
