"""meshctl commands of the credential lifecycle: `node revoke NAME`, `ca rotate`, `ca status`.

Owns only these subcommands (kept apart from main.py, which registers them through add_commands);
they call the AdminService RPCs RevokeNode, RotateCA and GetCA.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from meshsec.api.v1 import admin_pb2

from . import render

ClientFactory = Callable[[argparse.Namespace], Any]


def add_commands(
    node_sub: Any,
    command: Callable[..., argparse.ArgumentParser],
    connection_options: Callable[[argparse.ArgumentParser, bool], None],
    output_option: Callable[..., None],
    client: ClientFactory,
) -> None:
    """Register `node revoke` under the node verbs and the `ca` command with its verbs."""
    revoke = node_sub.add_parser(
        "revoke",
        help="revoke a node's certificates: peers drop its SAs and refuse it until it enrolls again",
    )
    revoke.add_argument("name")
    output_option(revoke, default="table")
    connection_options(revoke, True)
    revoke.set_defaults(func=lambda args: cmd_node_revoke(args, client(args)))

    p = command("ca", "the mesh CA: status, and rollover to a new CA with an overlap")
    ca_sub = p.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=type(p))
    rotate = ca_sub.add_parser(
        "rotate", help="start a CA rollover now (old and new CA both trusted during the overlap)"
    )
    status = ca_sub.add_parser("status", help="trusted CAs, the signing CA and the rollover phase")
    for q, fn in ((rotate, cmd_ca_rotate), (status, cmd_ca_status)):
        output_option(q, default="table")
        connection_options(q, True)
        q.set_defaults(func=lambda args, fn=fn: fn(args, client(args)))


def cmd_node_revoke(args: argparse.Namespace, client: Any) -> None:
    resp = client.call(client.admin.RevokeNode, admin_pb2.RevokeNodeRequest(name=args.name))
    if args.output != "table":
        render.emit(json_format.MessageToDict(resp), args.output)
        return
    for fp in resp.fingerprints:  # quiet success apart from what was revoked
        print(f"revoked {args.name} certificate sha256:{fp}")


def _print_status(status: admin_pb2.CAStatus, output: str) -> None:
    if output != "table":
        render.emit(json_format.MessageToDict(status, always_print_fields_with_no_presence=True), output)
        return
    since = f" since {render.timestamp(status.phase_since)}" if status.HasField("phase_since") else ""
    reason = f" ({status.reason})" if status.reason else ""
    print(f"phase: {status.phase}{reason}{since}; next step due {render.timestamp(status.next_step_at)}")
    render.print_table(
        ("SIGNING", "SUBJECT", "SHA256", "NOT AFTER"),
        [
            ("*" if c.signing else "", c.subject, c.sha256[:16], render.timestamp(c.not_after))
            for c in status.cas
        ],
    )


def cmd_ca_rotate(args: argparse.Namespace, client: Any) -> None:
    resp = client.call(client.admin.RotateCA, admin_pb2.RotateCARequest())
    if not resp.started and args.output == "table":
        print("a CA rollover is already in progress; nothing changed", file=sys.stderr)
    _print_status(resp.status, args.output)


def cmd_ca_status(args: argparse.Namespace, client: Any) -> None:
    _print_status(client.call(client.admin.GetCA, admin_pb2.GetCARequest()), args.output)
