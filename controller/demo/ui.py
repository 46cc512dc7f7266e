"""How the demo talks to the person running it: one line per finished step, a spinner while it runs.

Owns the console only.  A step that fails prints one line saying what failed and why, plus the log
file of the component at fault, and raises StepFailed so the demo can clean up and exit non-zero.
Without a terminal (CI, tests) the same lines are printed plainly, with no spinner and no colour.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

OK, FAIL = "✓", "✗"


class StepFailed(Exception):
    """A step's success criterion was not met: `reason` is one line, `log` the component's log file."""

    def __init__(self, reason: str, log: Path | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log = log
        self.step = ""


class Step:
    """Handed to the body of a step so it can name what it achieved."""

    def __init__(self) -> None:
        self.detail = ""


class Ui:
    def __init__(self, console: Console | None = None) -> None:
        tty = sys.stdout.isatty()
        self.console = console or Console(highlight=False, no_color=not tty, width=None if tty else 200)
        self.tty = tty

    def line(self, text: str, style: str = "") -> None:
        self.console.print(Text(text, style=style))

    @contextmanager
    def step(self, title: str) -> Iterator[Step]:
        step = Step()
        start = time.monotonic()
        try:
            if self.tty:
                with self.console.status(f"{title} …"):
                    yield step
            else:
                yield step
        except StepFailed as exc:
            exc.step = title
            self.line(f"{FAIL} {title}: {exc.reason}", "bold red")
            if exc.log is not None:
                self.line(f"  log: {exc.log}", "red")
            raise
        took = time.monotonic() - start
        detail = f" — {step.detail}" if step.detail else ""
        self.line(f"{OK} {title}{detail} ({took:.1f}s)", "green")

    def matrix(self, title: str, sources: Sequence[str], targets: Sequence[str], cells: dict) -> None:
        """A from-by-to grid; cells maps (src, dst) to (ok, text); missing cells are the diagonal."""
        self.line(title, "bold")  # not Table(title=): rich wraps a title to the table's width
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("FROM \\ TO")
        for t in targets:
            table.add_column(t, justify="center")
        for s in sources:
            row: list[Text] = [Text(s, style="bold")]
            for t in targets:
                if (s, t) not in cells:
                    row.append(Text("·", style="dim"))
                else:
                    ok, text = cells[(s, t)]
                    row.append(Text(text, style="green" if ok else "bold red"))
            table.add_row(*row)
        self.console.print(table)

    def block(self, text: str) -> None:
        self.console.print(Text(text.rstrip("\n")))
