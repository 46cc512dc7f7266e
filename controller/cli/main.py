"""meshctl entry point: argument parsing and one function per command.

Success is quiet (data commands print their data); every failure is one line on stderr and an exit code
from `errors.Exit`, listed in --help.  Never lets a traceback through.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from meshsec.api.v1 import admin_pb2, status_pb2
from meshsec.controller.spec import SpecInvalid, load_spec
from meshsec.controller.spec.dump import (
    node_to_dict,
    policy_to_dict,
    profile_to_dict,
    site_to_dict,
    spec_to_dict,
)
from meshsec.controller.spec.values import BadValue, parse_duration

from . import render
from .client import Client
from .errors import EXIT_CODES_HELP, CliError, Exit, from_rpc_error
from .settings import DEFAULT_CONFIG, DEFAULT_CONTROLLER, resolve

__all__ = ["main"]


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors, which is our invalid-spec code: report usage errors as code 1."""

    def error(self, message: str) -> NoReturn:
        raise CliError(Exit.USAGE, f"{message} (see '{self.prog} --help')")


def _connection_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = {"default": argparse.SUPPRESS} if suppress else {"default": None}
    g = p.add_argument_group("connection")
    g.add_argument(
        "--controller", help=f"controller address (env MESHSEC_CONTROLLER; default {DEFAULT_CONTROLLER})", **d
    )
    g.add_argument("--ca", help="CA certificate PEM (env MESHSEC_CA)", **d)
    g.add_argument("--cert", help="admin client certificate PEM (env MESHSEC_CERT)", **d)
    g.add_argument("--key", help="admin client key PEM (env MESHSEC_KEY)", **d)
    g.add_argument("--config", help=f"meshctl.yaml (env MESHCTL_CONFIG; default {DEFAULT_CONFIG})", **d)
    g.add_argument("--timeout", type=float, help="seconds per call (default 10)", **d)


def _output_option(p: argparse.ArgumentParser, default: str = "table") -> None:
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=default, help="output format")


def build_parser() -> Parser:
    parser = Parser(
        prog="meshctl",
        description="Operate a meshsec IPsec mesh through its controller.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )
        _connection_options(p, suppress=True)
        return p

    p = command("apply", "validate mesh.yaml and store it; prints the plan per node")
    p.add_argument("-f", "--filename", required=True, help="mesh.yaml ('-' for stdin)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan, store nothing")
    _output_option(p)
    p.set_defaults(func=cmd_apply)

    p = command("get", "list nodes, policies, profiles or sites, or print the whole spec")
    p.add_argument("kind", choices=("nodes", "policies", "profiles", "sites", "spec"))
    _output_option(p)
    p.set_defaults(func=cmd_get)

    p = command("node", "show or delete one node")
    node_sub = p.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    show = node_sub.add_parser("show", help="a node's spec")
    show.add_argument("name")
    _output_option(show, default="yaml")
    show.set_defaults(func=cmd_node_show)
    delete = node_sub.add_parser("delete", help="remove a node from the mesh; its peers drop their SAs")
    delete.add_argument("name")
    delete.set_defaults(func=cmd_node_delete)
    for q in (show, delete):
        _connection_options(q, suppress=True)

    p = command("status", "SA health: a per-node table and a peer-by-peer matrix (or one node's peers)")
    p.add_argument("node", nargs="?", default="")
    p.add_argument("--watch", "-w", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    _output_option(p)
    p.set_defaults(func=cmd_status)

    p = command(
        "export",
        "print the configuration of an external node (swanctl.conf for strongSwan); pre-shared keys "
        "are placeholders unless --show-secrets",
    )
    p.add_argument("name")
    p.add_argument("--format", choices=("swanctl",), default="swanctl")
    p.add_argument(
        "--show-secrets",
        action="store_true",
        help="include the real pre-shared keys (the controller logs who asked); keep the output secret",
    )
    p.add_argument(
        "--dir",
        help="write swanctl.conf (mode 0600) and the files it needs (x509ca/meshsec-ca.pem) into DIR, "
        "e.g. /etc/swanctl, instead of printing",
    )
    p.set_defaults(func=cmd_export)

    p = command("token", "bootstrap tokens for enrolling nodes")
    token_sub = p.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    create = token_sub.add_parser(
        "create", help="create a bootstrap token (printed once; --uses N for N nodes)"
    )
    create.add_argument("--node", default="", help="bind the token to this node name")
    create.add_argument("--ttl", default="1h", help="validity, e.g. 30m, 1h (default 1h)")
    create.add_argument(
        "--uses",
        type=int,
        default=1,
        help="enrollments the token admits (default 1; e.g. the node count for a Kubernetes DaemonSet)",
    )
    _output_option(create)
    _connection_options(create, suppress=True)
    create.set_defaults(func=cmd_token_create)

    from . import lifecycle  # node revoke, ca rotate|status

    lifecycle.add_commands(node_sub, command, _connection_options, _output_option, _client)
    return parser


# --- commands ---------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    settings = resolve(args.controller, args.ca, args.cert, args.key, args.config)
    return Client(settings, args.timeout or 10.0)


def _spec_errors(errors: Sequence[Any]) -> CliError:
    for e in errors:
        where = f"{e.file}:{e.line}" if e.line else e.file
        print(f"{where}: {e.field}: {e.reason}" if e.field else f"{where}: {e.reason}", file=sys.stderr)
    return CliError(Exit.INVALID_SPEC, "")


def cmd_apply(args: argparse.Namespace) -> None:
    if args.filename == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        try:
            text = Path(args.filename).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(
                Exit.USAGE, f"cannot read {args.filename}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        name = Path(args.filename).name
    try:
        load_spec(text, name)  # fast local feedback; the controller validates again
    except SpecInvalid as exc:
        raise _spec_errors(exc.errors) from None
    client = _client(args)
    resp = client.call(
        client.admin.Apply, admin_pb2.ApplyRequest(spec_yaml=text, filename=name, dry_run=args.dry_run)
    )
    if resp.errors:
        raise _spec_errors(resp.errors)
    plans = list(resp.plan)
    data = {
        "version": resp.version,
        "dryRun": args.dry_run,
        "plan": [json_format.MessageToDict(p) for p in plans],
    }
    if args.output != "table":
        render.emit(data, args.output)
    elif plans:
        render.print_table(
            ("NODE", "PEERS ADDED", "PEERS CHANGED", "PEERS REMOVED", "SAS ADDED", "SAS REMOVED"),
            [
                (
                    p.node,
                    " ".join(p.peers_added),
                    " ".join(p.peers_changed),
                    " ".join(p.peers_removed),
                    " ".join(p.sas_added),
                    " ".join(p.sas_removed),
                )
                for p in plans
            ],
        )


def cmd_get(args: argparse.Namespace) -> None:
    client = _client(args)
    if args.kind == "nodes":
        resp = client.call(client.admin.ListNodes, admin_pb2.ListNodesRequest())
        views = sorted(resp.nodes, key=lambda v: v.node.name)
        data = [
            {
                **node_to_dict(v.node),
                "connected": v.connected,
                "appliedVersion": v.applied_version,
                "certFingerprint": v.cert_fingerprint,
                "certNotAfter": render.timestamp(v.cert_not_after),
            }
            for v in views
        ]
        rows = [
            (
                v.node.name,
                node_to_dict(v.node)["kind"],
                v.node.site or "-",
                ",".join(v.node.endpoints) or "-",
                ",".join(v.node.subnets) or "-",
                "yes" if v.connected else "no",
                v.applied_version or "-",
                render.timestamp(v.cert_not_after) or "not enrolled",
            )
            for v in views
        ]
        render.emit(
            data,
            args.output,
            ("NAME", "KIND", "SITE", "ENDPOINTS", "SUBNETS", "CONNECTED", "VERSION", "CERT EXPIRES"),
            rows,
            empty="no nodes in the spec",
        )
        return
    resp = client.call(client.admin.GetSpec, admin_pb2.GetSpecRequest())
    spec = resp.spec
    if args.kind == "spec":
        render.emit(spec_to_dict(spec), "yaml" if args.output == "table" else args.output)
    elif args.kind == "policies":
        data = [policy_to_dict(p) for p in spec.policies]
        rows = [(d["name"], d["topology"], d["mode"], d["profile"], _selection(d)) for d in data]
        render.emit(
            data, args.output, ("NAME", "TOPOLOGY", "MODE", "PROFILE", "SELECTS"), rows, "no policies"
        )
    elif args.kind == "profiles":
        data = [profile_to_dict(p) for p in spec.profiles]
        rows = [
            (
                d["name"],
                d["auth"],
                " ".join(d["ike"]["proposals"]),
                " ".join(d["esp"]["proposals"]),
                d["ike"]["rekey"],
                d["esp"]["rekey"],
                d["dpd"]["interval"],
            )
            for d in data
        ]
        render.emit(
            data, args.output, ("NAME", "AUTH", "IKE", "ESP", "IKE REKEY", "CHILD REKEY", "DPD"), rows
        )
    else:
        data = [site_to_dict(s) for s in spec.sites]
        members: dict[str, list[str]] = {}
        for n in spec.nodes:
            if n.site:
                members.setdefault(n.site, []).append(n.name)
        rows = [
            (d["name"], ",".join(d["subnets"]), ",".join(sorted(members.get(d["name"], []))) or "-")
            for d in data
        ]
        render.emit(data, args.output, ("NAME", "SUBNETS", "NODES"), rows, "no sites")


def _selection(policy: dict[str, Any]) -> str:
    if "pairs" in policy:
        return " ".join(f"{a}<->{b}" for a, b in policy["pairs"])
    parts = []
    for key in ("hubs", "spokes", "members"):
        if key in policy:
            sel = policy[key]
            what = ["all"] if sel.get("all") else []
            what += sel.get("nodes", []) + [f"site:{s}" for s in sel.get("sites", [])]
            what += [f"{k}={v}" for k, v in sel.get("labels", {}).items()]
            parts.append(f"{key}: {','.join(what)}" if key != "members" else ",".join(what))
    return "; ".join(parts)


def cmd_node_show(args: argparse.Namespace) -> None:
    client = _client(args)
    node = client.call(client.admin.GetNode, admin_pb2.GetNodeRequest(name=args.name))
    data = node_to_dict(node)
    if args.output == "table":
        render.print_table(("FIELD", "VALUE"), [(k, _flat(v)) for k, v in data.items()])
    else:
        render.emit(data, args.output)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def cmd_node_delete(args: argparse.Namespace) -> None:
    client = _client(args)
    client.call(client.admin.DeleteNode, admin_pb2.DeleteNodeRequest(name=args.name))


def _status_once(client: Client, args: argparse.Namespace) -> None:
    resp = client.call(client.admin.GetStatus, admin_pb2.GetStatusRequest(node=args.node))
    nodes = sorted(resp.nodes, key=lambda n: n.node)
    if args.node and not nodes:
        raise CliError(Exit.NOT_FOUND, f"no status for node {args.node!r} (not enrolled or never reported)")
    if args.output != "table":
        render.emit(json_format.MessageToDict(resp), args.output)
        return
    if not nodes:
        print("no node has reported status yet", file=sys.stderr)
        return
    rows = []
    for n in nodes:
        up = sum(p.ike_state == status_pb2.IKE_SA_STATE_ESTABLISHED for p in n.peers)
        rows.append(
            (
                n.node,
                "yes" if n.connected else "no",
                n.applied_version,
                f"{up}/{len(n.peers)}",
                render.ago(n.reported_at),
                "; ".join(n.errors) or "-",
            )
        )
    render.print_table(("NODE", "CONNECTED", "VERSION", "PEERS UP", "REPORTED", "ERRORS"), rows)
    if args.node:
        (n,) = nodes[:1]
        render.print_table(
            (
                "PEER",
                "IKE",
                "AGE",
                "ENDPOINT",
                "TRANSFORM",
                "CHILD SAS",
                "IN / OUT",
                "RTT",
                "REKEYS",
                "LAST ERROR",
            ),
            [
                (
                    p.peer,
                    render.ike_state(p.ike_state),
                    render.ago(p.established_at),
                    p.remote_endpoint or "-",
                    p.ike_transform or "-",
                    ",".join(c.name for c in p.children) or "-",
                    f"{render.size(sum(c.counters.bytes_in for c in p.children))} / "
                    f"{render.size(sum(c.counters.bytes_out for c in p.children))}",
                    f"{p.dpd_rtt_us / 1000:.1f}ms" if p.dpd_rtt_us else "-",
                    p.rekeys,
                    p.last_error or "-",
                )
                for p in sorted(n.peers, key=lambda p: p.peer)
            ],
        )
    elif nodes:
        columns, matrix = render.health_matrix(nodes)
        render.print_table(columns, matrix)


def cmd_status(args: argparse.Namespace) -> None:
    client = _client(args)
    if not args.watch:
        _status_once(client, args)
        return
    while True:
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        _status_once(client, args)
        sys.stdout.flush()
        time.sleep(max(args.interval, 0.2))


def cmd_export(args: argparse.Namespace) -> None:
    client = _client(args)
    request = admin_pb2.ExportRequest(
        name=args.name, format=admin_pb2.EXPORT_FORMAT_SWANCTL, include_secrets=args.show_secrets
    )
    try:
        resp = client.admin.Export(request, timeout=client.timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # an agent, or no agent connected to it
            raise CliError(Exit.USAGE, exc.details() or "cannot export this node") from None
        raise from_rpc_error(exc, client.target) from None
    if args.dir:
        _write_export(Path(args.dir), resp)
    else:
        sys.stdout.write(resp.config)
    if resp.has_placeholders:
        print(
            f"meshctl: pre-shared keys are placeholders; `meshctl export {args.name} --show-secrets` "
            "prints them (the controller logs the request)",
            file=sys.stderr,
        )
    if resp.files and not args.dir:
        paths = ", ".join(f.path for f in resp.files)
        print(
            f"meshctl: certificate auth also needs {paths} beside swanctl.conf; "
            f"`meshctl export {args.name} --dir DIR` writes them",
            file=sys.stderr,
        )


def _write_export(root: Path, resp: admin_pb2.ExportResponse) -> None:
    """swanctl.conf (owner-only: it may hold keys) and the public files, under `root`."""
    try:
        for f in resp.files:
            target = root / f.path
            if ".." in Path(f.path).parts or Path(f.path).is_absolute():
                raise CliError(Exit.CONTROLLER_ERROR, f"refusing file path {f.path!r} from the controller")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "swanctl.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file existed with looser permissions
        with os.fdopen(fd, "w") as fh:
            fh.write(resp.config)
    except OSError as exc:
        raise CliError(Exit.USAGE, f"cannot write into {root}: {exc.strerror or exc}") from None


def cmd_token_create(args: argparse.Namespace) -> None:
    try:
        ttl = parse_duration(args.ttl)
    except BadValue as exc:
        raise CliError(Exit.USAGE, f"--ttl: {exc}") from None
    if args.uses < 1:
        raise CliError(Exit.USAGE, "--uses: must be at least 1")
    client = _client(args)
    resp = client.call(
        client.admin.CreateToken,
        admin_pb2.CreateTokenRequest(node=args.node, ttl_seconds=ttl, uses=args.uses),
    )
    data = {
        "token": resp.token,
        "expiresAt": render.timestamp(resp.expires_at),
        "caCertSha256": resp.ca_cert_sha256,
        "uses": args.uses,
    }
    if args.output == "table":
        sys.stdout.write(resp.token + "\n")  # the one thing people pipe; details with -o json/yaml
    else:
        render.emit(data, args.output)


# --- entry point ------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return Exit.USAGE
    args.func(args)
    return Exit.OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return int(run(argv))
    except CliError as exc:
        if exc.message:
            print(f"meshctl: {exc.message}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        return int(Exit.OK if argv is not None and "--watch" in argv else Exit.INTERRUPTED)
    except BrokenPipeError:
        return int(Exit.OK)
    except Exception as exc:  # the promise is one line, never a traceback
        print(f"meshctl: internal error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return int(Exit.CONTROLLER_ERROR)


if __name__ == "__main__":
    sys.exit(main())
