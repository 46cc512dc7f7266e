"""Spec problems: the one error type `load_spec` raises, carrying every problem found.

Owns the shape of a validation error (file, line, field, reason) and its one-line form.  It must not
know anything about the schema; the loader and the semantic checks produce the problems.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class SpecProblem:
    """One thing wrong with a mesh.yaml, located precisely enough for an editor to jump to it."""

    file: str
    line: int  # 1-based; 0 when unknown
    field: str  # dotted path, e.g. "nodes[2].subnets[0]"; "" for the document itself
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class SpecInvalid(ValueError):
    """The spec has problems; `errors` lists all of them (sorted by line), not just the first."""

    def __init__(self, errors: list[SpecProblem]) -> None:
        self.errors = sorted(set(errors), key=lambda p: (p.line, p.field, p.reason))
        super().__init__("\n".join(str(p) for p in self.errors))
