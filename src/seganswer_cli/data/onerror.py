"""What a reader does with a bad record: stop with a message naming file and record, or skip and count.

Readers build each sample through ``RecordErrors.attempt``; nothing is dropped silently: in
``skip`` mode every skipped record is kept (file, record, reason) and reported at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from seganswer_cli.errors import DataError, ImageReadError, UsageError

OnError = Literal["stop", "skip"]
ON_ERROR_CHOICES = ("stop", "skip")

T = TypeVar("T")

# Errors a malformed record produces while being turned into a sample; anything else is a bug.
_RECORD_ERRORS = (DataError, ImageReadError, ValueError, KeyError, TypeError, IndexError)


@dataclass(frozen=True)
class SkippedRecord:
    """One record left out in ``skip`` mode."""

    file: str
    """The dataset file the record came from."""
    record: str
    """Which record: an index, id or key as the format names it."""
    reason: str
    """Why it was left out (the error message)."""


class RecordErrors:
    """Applies the ``on_error`` policy (``stop`` or ``skip``) for one pass over a dataset."""

    def __init__(self, on_error: OnError = "stop") -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise UsageError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[SkippedRecord] = []

    def attempt(self, file: str | Path, record: object, build: Callable[[], T]) -> T | None:
        """Run ``build()``; on a record error raise ``DataError`` naming file and record, or skip it.

        Returns None when the record was skipped.
        """
        try:
            return build()
        except _RECORD_ERRORS as e:
            reason = _reason(e)
            if self.on_error == "stop":
                raise DataError(f"{file}: record {record}: {reason}") from e
            self.skipped.append(SkippedRecord(str(file), str(record), reason))
            return None

    def fail(self, file: str | Path, record: object, reason: str) -> None:
        """Report a bad record found by a check (not an exception): raise or count per the policy."""
        if self.on_error == "stop":
            raise DataError(f"{file}: record {record}: {reason}")
        self.skipped.append(SkippedRecord(str(file), str(record), reason))

    def summary(self, limit: int = 5) -> str:
        """One paragraph for the end of a run: how many records were skipped and the first reasons."""
        if not self.skipped:
            return "no records skipped"
        lines = [f"{len(self.skipped)} record(s) skipped:"]
        lines += [f"  {s.file}: record {s.record}: {s.reason}" for s in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


def _reason(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error.args[0]!r}" if error.args else "missing field"
    return str(error) or type(error).__name__
