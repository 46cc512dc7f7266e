"""Output for meshctl: rich tables for people, JSON and YAML for programs.

Every command builds plain rows (dicts); this module prints them in the chosen format.  Nothing here
talks to the controller.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from meshsec.api.v1 import status_pb2
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["ago", "emit", "health_matrix", "ike_state", "print_table", "timestamp"]


def console() -> Console:
    tty = sys.stdout.isatty()
    return Console(
        file=sys.stdout, highlight=False, soft_wrap=not tty, width=None if tty else 250, no_color=not tty
    )


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold", title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))  # Text: "[fd00::1]" is not markup
    console().print(table)


def emit(
    data: Any, output: str, columns: Sequence[str] = (), rows: Sequence[Sequence[Any]] = (), empty: str = ""
) -> None:
    """Print `data` as JSON/YAML, or `rows` as a table (or, like kubectl, a note on stderr when empty)."""
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif output == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    elif rows:
        print_table(columns, rows)
    elif empty:
        print(empty, file=sys.stderr)


def timestamp(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def ago(ts: Timestamp, now: dt.datetime | None = None) -> str:
    if not ts.seconds:
        return "-"
    now = now or dt.datetime.now(dt.UTC)
    secs = int((now - ts.ToDatetime(tzinfo=dt.UTC)).total_seconds())
    if secs < 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


_IKE_SYMBOL = {
    status_pb2.IKE_SA_STATE_ESTABLISHED: "up",
    status_pb2.IKE_SA_STATE_REKEYING: "rekey",
    status_pb2.IKE_SA_STATE_CONNECTING: "conn",
    status_pb2.IKE_SA_STATE_DELETING: "del",
    status_pb2.IKE_SA_STATE_FAILED: "FAIL",
    status_pb2.IKE_SA_STATE_DOWN: "down",
}


def size(n: int) -> str:
    """Bytes as strongSwan's --list-sas shows them: 0 B, 812 B, 1.2 KiB, 3.4 MiB, ..."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns first


def ike_state(state: int) -> str:
    return _IKE_SYMBOL.get(state, "?")


def health_matrix(nodes: Sequence[status_pb2.NodeStatus]) -> tuple[list[str], list[list[str]]]:
    """Rows: reporting nodes; columns: every peer any of them reports; cells: that node's view."""
    peers = sorted({p.peer for n in nodes for p in n.peers} | {n.node for n in nodes})
    rows = []
    for n in sorted(nodes, key=lambda n: n.node):
        seen = {p.peer: ike_state(p.ike_state) for p in n.peers}
        rows.append([n.node, *(("·" if peer == n.node else seen.get(peer, "")) for peer in peers)])
    return ["NODE \\ PEER", *peers], rows
