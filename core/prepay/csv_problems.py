"""What a clerk is told about a bad CSV file: one problem per bad cell (line, column, the
value found, and what to write instead), all of them at once, so the file is corrected in
one pass. Used by the account import and the meter readings import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import RequestError


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A bad cell: `line` is the file's line (the spreadsheet's row number, the header
    being line 1), `field` its column, `value` what the cell holds, `message` why it is
    refused and what is expected."""

    line: int
    field: str
    message: str
    value: str = ""

    def __str__(self) -> str:
        # The value is quoted unless the message quotes it already.
        quoted = repr(self.value) in self.message or f"got {self.value}" in self.message
        shown = f" (the cell holds {self.value!r})" if self.value and not quoted else ""
        return f"line {self.line}: {self.field}: {self.message}{shown}"


class RowsRefused(RequestError):
    """A file refused as a whole because of `problems` (nothing of it was written)."""

    def __init__(self, field: str, problems: Sequence[RowProblem]) -> None:
        self.problems = tuple(problems)
        lines = sorted({p.line for p in self.problems})
        first = str(self.problems[0]) if self.problems else ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(field, f"{len(lines)} bad line(s), nothing written: {first}{more}"[:900])
