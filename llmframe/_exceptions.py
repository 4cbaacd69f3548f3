"""Exceptions raised by llmframe.

The tree::

    LLMFrameError
    ├── ConfigError      bad endpoints/options; raised before any request is sent
    ├── InputFileError   the requests file cannot be opened or read
    ├── StoreError       a result could not be stored (disk full, ...): the run stopped;
    │                    what was stored before stays stored
    ├── WorkerError      a --workers process died: its finished rows are saved
    └── BudgetReached    the budget stopped the run; ``partial`` holds what was answered

    Interrupted (KeyboardInterrupt)   a run stopped by Ctrl-C / a kernel interrupt

Errors of single rows are never raised: they become error rows (see ``Result``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BudgetReached", "ConfigError", "InputFileError", "Interrupted", "LLMFrameError",
           "StoreError", "WorkerError"]


class LLMFrameError(Exception):
    """Base class of every error llmframe raises."""


class ConfigError(LLMFrameError, ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


class InputFileError(LLMFrameError, OSError):
    """The input file is missing or unreadable."""


class StoreError(LLMFrameError):
    """A result could not be stored; the run stopped. ``__cause__`` is the original error."""


class WorkerError(LLMFrameError):
    """A worker process of a ``--workers`` run died before finishing its rows."""


class Interrupted(KeyboardInterrupt):
    """A run was interrupted; ``partial`` holds what was answered before the stop."""

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class BudgetReached(LLMFrameError):
    """The run stopped sending before its spend would pass ``budget``; what was in flight
    finished and is kept. ``partial``: the frame (polars) or :class:`RunStats` (files) so
    far; ``not_sent``: rows left without a result (resume to send them); ``spent``: USD.
    """

    def __init__(self, message: str, partial: Any = None, *, not_sent: int = 0,
                 spent: float = 0.0) -> None:
        super().__init__(message)
        self.partial = partial
        self.not_sent = not_sent
        self.spent = spent
