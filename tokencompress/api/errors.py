"""Error types whose message is the whole story: the CLI prints ``str(err)`` on one line and exits.

Every error a user can cause (a bad YAML field, a budget the model cannot meet, a broken video)
is raised as one of these, so callers can catch the family without swallowing real bugs.
"""

from __future__ import annotations

__all__ = [
    "TokenCompressError",
    "ConfigError",
    "CompatibilityError",
    "VideoError",
    "BudgetError",
    "PluginError",
    "DecodeError",
    "PluginFault",
    "StreamBusyError",
]


class TokenCompressError(Exception):
    """Base class: a problem with the user's input, reported as one line."""


class ConfigError(TokenCompressError, ValueError):
    """The pipeline description is malformed: YAML syntax, unknown key, value out of range."""


class CompatibilityError(TokenCompressError):
    """A strategy needs something the target cannot provide (named on both sides)."""


class BudgetError(ConfigError):
    """A token budget larger than the tokens a frame has, or otherwise impossible."""


class VideoError(TokenCompressError):
    """A video that is missing, unreadable, or has no frames."""


class PluginError(TokenCompressError):
    """Plugin registration failed: a duplicate name, or a malformed registration."""


class DecodeError(VideoError):
    """Decoding failed part-way; ``frames_decoded`` frames came out before it did."""

    def __init__(self, message: str, frames_decoded: int) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded


class PluginFault(TokenCompressError):
    """A strategy, target or observer raised or broke its contract while a chunk ran.

    The message names the plugin, its package and version, the stage and the chunk; the
    original exception is kept as ``__cause__`` (shown under ``--debug``).
    """


class StreamBusyError(TokenCompressError):
    """A second thread called a stream while another thread's call was still running on it.

    A stream takes one caller at a time (:mod:`tokencompress.stream.lock`): the second caller is
    refused at once, before it touches anything, and the first one's call goes on unharmed.
    """
