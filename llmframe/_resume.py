"""Resuming a run from its own output files.

Results are appended as they complete (whole lines, flushed at least every second), so
after a crash — even ``kill -9`` — the save and errors files hold every row that finished,
at most the last second missing, and at most one torn line at the end (or, with several
workers appending, a torn line anywhere). ``scan`` reads a file back, keeps the indices of
complete records (``index`` is always llmframe's own key: the input line sits under
``request``), and rewrites the file without any torn line, so the final files hold every
input line exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ._exceptions import ConfigError
from ._json import loads
from ._sinks import clean_lines

__all__ = ["IndexSet", "NotIn", "OutputsExist", "Scan", "plan_outputs", "prepare_outputs",
           "read_scan", "scan"]


class IndexSet:
    """A set of non-negative ints as a bitmap: 10M rows fit in 1.25 MB.

    >>> s = IndexSet(); s.add(3); s.add(1000)
    >>> 3 in s, 4 in s, 1000 in s, len(s)
    (True, False, True, 2)
    """

    __slots__ = ("_bits", "_count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self._count = 0

    def add(self, i: int) -> None:
        byte, bit = divmod(i, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte - len(self._bits) + 1 + len(self._bits) // 2))
        if not self._bits[byte] >> bit & 1:
            self._bits[byte] |= 1 << bit
            self._count += 1

    def __contains__(self, i: object) -> bool:
        if not isinstance(i, int) or i < 0:
            return False
        byte, bit = divmod(i, 8)
        return byte < len(self._bits) and bool(self._bits[byte] >> bit & 1)

    def __len__(self) -> int:
        return self._count

    def update(self, other: IndexSet) -> None:
        if len(other._bits) > len(self._bits):
            self._bits.extend(bytes(len(other._bits) - len(self._bits)))
        for k, b in enumerate(other._bits):
            if b:
                merged = self._bits[k] | b
                self._count += bin(merged).count("1") - bin(self._bits[k]).count("1")
                self._bits[k] = merged


class Scan:
    """What a scan of an output file found: ``done`` indices and the USD they ``spent``."""

    __slots__ = ("done", "spent")

    def __init__(self) -> None:
        self.done = IndexSet()
        self.spent = 0.0

    def accept(self, record: object) -> bool:
        index = record.get("index") if isinstance(record, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or index < 0 or (
                index in self.done):
            return False
        self.done.add(index)
        cost = record.get("cost_usd")  # type: ignore[union-attr]
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost > 0:
            self.spent += cost
        return True


def scan(path: Path) -> tuple[IndexSet, int]:
    """Indices recorded in ``path`` and how many torn/duplicate lines were dropped from it.

    A line counts if it is a complete JSON object with an integer ``index`` not seen before
    in this file; the file is rewritten without any other line (see ``clean_lines``).
    """
    found = Scan()
    return found.done, clean_lines(path, found.accept)


def read_scan(path: Path) -> Scan:
    """What ``path`` records (indices, USD spent), read without changing it (a dry run,
    the budget of a resumed run)."""
    found = Scan()
    if path.exists():
        with path.open("rb") as f:
            for line in f:
                try:
                    found.accept(loads(line))
                except ValueError:
                    continue
    return found


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


class OutputsExist(ConfigError):
    """The outputs exist and neither resume nor overwrite was asked for."""


_REFUSED = (". Pass --resume (resume=True) to send only the rows without a result, "
            "--retry-errors (retry_errors=True) to also resend failed rows, or --overwrite "
            "(overwrite=True) to replace them")
_REFUSED_DRY = ("; the real run would refuse them. Pass --resume, --retry-errors or "
                "--overwrite (the dry run then estimates what that run would send)")


def _over_outputs(save: Path, errors: Path, resume: bool, retry_errors: bool,
                  overwrite: bool, refused: str) -> bool:
    """True when the run continues over existing outputs, False when it starts afresh;
    :class:`OutputsExist` (ending with ``refused``) when they exist and no mode was chosen."""
    existing = {p: n for p in (save, errors) if (n := _lines(p))}
    if overwrite or (not existing and not retry_errors):
        return False
    if not (resume or retry_errors):
        what = ", ".join(f"{p} ({n:,} lines)" for p, n in existing.items())
        raise OutputsExist(f"outputs already exist: {what}{refused}")
    return True


def prepare_outputs(save: Path, errors: Path, *, resume: bool = False,
                    retry_errors: bool = False, overwrite: bool = False
                    ) -> tuple[Callable[[int], bool] | None, bool, str | None]:
    """Decide what a run over existing outputs does.

    Returns ``(keep, append, note)``: ``keep(index)`` says whether a row still needs
    sending (None: all rows), ``append`` whether to append to the files, and a note for the
    user. Raises :class:`OutputsExist` when outputs exist and no mode was chosen.
    """
    if not _over_outputs(save, errors, resume, retry_errors, overwrite, _REFUSED):
        return None, False, None
    done, dropped_save = scan(save)
    note = f"resuming: {len(done):,} rows already answered"
    if retry_errors:
        previous = errors.with_name(errors.name + ".prev")
        failed, _ = scan(errors)
        if errors.exists():
            if previous.exists():  # an earlier --retry-errors was interrupted: keep both
                with errors.open("rb") as src, previous.open("ab") as dst:
                    dst.write(src.read())
                errors.unlink()
            else:
                os.replace(errors, previous)
        note += f"; sending again {len(failed):,} rows from {errors.name} (old errors kept in "
        note += f"{previous.name})"
    else:
        failed, dropped_errors = scan(errors)
        dropped_save += dropped_errors
        done.update(failed)
        note += f", {len(failed):,} ended as errors (use --retry-errors to send those again)"
    if dropped_save:
        note += f"; dropped {dropped_save} torn line(s) from an interrupted write"
    return NotIn(done), True, note


def plan_outputs(save: Path, errors: Path, *, resume: bool = False,
                 retry_errors: bool = False, overwrite: bool = False
                 ) -> Callable[[int], bool] | None:
    """What :func:`prepare_outputs` would send, deciding the same way but changing
    nothing (``--dry-run``): ``keep(index)``, or None for every row."""
    if not _over_outputs(save, errors, resume, retry_errors, overwrite, _REFUSED_DRY):
        return None
    done = read_scan(save).done
    if not retry_errors:
        done.update(read_scan(errors).done)
    return NotIn(done)


class NotIn:
    """``keep`` for a resumed run: rows whose index has no result yet (picklable, for
    ``--workers``)."""

    __slots__ = ("done",)

    def __init__(self, done: IndexSet) -> None:
        self.done = done

    def __call__(self, index: int) -> bool:
        return index not in self.done
