"""`meshsec-controller`: init (KEK, CA, admin credentials) and serve (one controller replica).

Owns the command line and process setup (logging, signals, exit codes).  Logs never contain tokens,
keys or PSKs: nothing here logs request payloads.

Exit codes: 0 ok, 1 runtime error (etcd unreachable, not initialized, bad KEK), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
from pathlib import Path

from meshsec.controller.ca import ROLE_ADMIN, Sealer, create_kek, load_kek, load_or_create_ca
from meshsec.controller.ca.authority import CANotInitialized
from meshsec.controller.ca.kek import KEK_FILENAME, KekError
from meshsec.controller.store import StoreError

log = logging.getLogger("meshsec.controller")

DEFAULT_STATE_DIR = "/var/lib/meshsec/controller"
DEFAULT_SOCKET = "/run/meshsec/controller.sock"
DEFAULT_ENROLL_SOCKET = "/run/meshsec/enroll.sock"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9450"


def _metrics_listen(flag: str | None) -> tuple[str, bool]:
    from meshsec.controller.observability.http import ListenError, choose_listen

    try:
        return choose_listen(flag, DEFAULT_METRICS_LISTEN)
    except ListenError as exc:
        raise RuntimeError(str(exc)) from None  # main() turns it into one line


def _endpoints(text: str) -> list[str]:
    out = []
    for item in text.split(","):
        item = item.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if item:
            out.append(item)
    return out


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _server_names_env() -> list[str]:
    return [n.strip() for n in os.environ.get("MESHSEC_SERVER_NAMES", "").split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsec-controller",
        description="meshsec controller: keeps the mesh in etcd and pushes each agent its desired state.",
        epilog="exit codes: 0 ok, 1 runtime error, 2 usage error",
    )
    p.add_argument(
        "--log-level",
        default=_env("MESHSEC_LOG_LEVEL", "info"),
        help="debug|info|warning (env MESHSEC_LOG_LEVEL)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--state-dir",
            type=Path,
            default=Path(_env("MESHSEC_STATE_DIR", DEFAULT_STATE_DIR)),
            help="KEK, embedded etcd data, admin credentials (env MESHSEC_STATE_DIR)",
        )
        sp.add_argument(
            "--etcd",
            default=_env("MESHSEC_ETCD", ""),
            help="comma-separated etcd endpoints host:port; empty = run an embedded etcd (env MESHSEC_ETCD)",
        )
        sp.add_argument(
            "--etcd-client-port",
            type=int,
            default=int(_env("MESHSEC_ETCD_CLIENT_PORT", "0")),
            help="embedded etcd client port on 127.0.0.1 (0 = random)",
        )
        sp.add_argument(
            "--etcd-peer-port",
            type=int,
            default=int(_env("MESHSEC_ETCD_PEER_PORT", "0")),
            help="embedded etcd peer port on 127.0.0.1 (0 = random)",
        )
        sp.add_argument(
            "--socket",
            default=_env("MESHSEC_SOCKET", DEFAULT_SOCKET),
            help=f"unix socket to serve on ('' = none; env MESHSEC_SOCKET; default {DEFAULT_SOCKET})",
        )
        for what, env_name, text in (
            ("ca", "MESHSEC_ETCD_CA_FILE", "CA certificate (PEM) that verifies etcd; turns TLS on"),
            ("cert", "MESHSEC_ETCD_CERT_FILE", "client certificate (PEM) for etcd"),
            ("key", "MESHSEC_ETCD_KEY_FILE", "client key (PEM) for etcd"),
        ):
            sp.add_argument(
                f"--etcd-{what}-file",
                type=Path,
                default=Path(os.environ[env_name]) if os.environ.get(env_name) else None,
                help=f"{text} (env {env_name})",
            )

    init = sub.add_parser("init", help="create the KEK, the CA (in etcd) and admin credentials")
    common(init)
    init.add_argument(
        "--controller", default="", help="address written to meshctl.yaml (default unix://<socket>)"
    )
    init.add_argument("--admin-name", default="admin", help="CN of the admin certificate")
    init.add_argument("--admin-days", type=int, default=365, help="admin certificate lifetime in days")

    serve = sub.add_parser("serve", help="run one controller replica")
    common(serve)
    serve.add_argument(
        "--listen",
        default=_env("MESHSEC_LISTEN", "127.0.0.1:7443"),
        help="TCP host:port for gRPC ('' = none; env MESHSEC_LISTEN)",
    )
    serve.add_argument(
        "--enroll-listen",
        default=_env("MESHSEC_ENROLL_LISTEN", "127.0.0.1:7444"),
        help="TCP host:port for enrollment (no client cert; '' = none; env MESHSEC_ENROLL_LISTEN)",
    )
    serve.add_argument(
        "--enroll-socket",
        default=_env("MESHSEC_ENROLL_SOCKET", DEFAULT_ENROLL_SOCKET),
        help=f"unix socket of the enrollment endpoint ('' = none; default {DEFAULT_ENROLL_SOCKET})",
    )
    serve.add_argument(
        "--replica", default=_env("MESHSEC_REPLICA", ""), help="replica name (default host-pid)"
    )
    serve.add_argument(
        "--singleton-jobs",
        action=argparse.BooleanOptionalAction,
        default=_env("MESHSEC_SINGLETON_JOBS", "1") != "0",
        help="run the singleton jobs (gc, CA rotation) on the replica holding the etcd election "
        "(default on; --no-singleton-jobs or env MESHSEC_SINGLETON_JOBS=0 to leave them to other replicas)",
    )
    serve.add_argument(
        "--election-ttl",
        type=int,
        default=int(_env("MESHSEC_ELECTION_TTL", "10")),
        help="lease TTL of the singleton-jobs election, seconds: a dead leader's jobs move to another "
        "replica within it (min 2; env MESHSEC_ELECTION_TTL)",
    )
    serve.add_argument(
        "--metrics-listen",
        default=None,
        help="HTTP host:port for /metrics, /healthz, /readyz ('' = none; env MESHSEC_METRICS_LISTEN or "
        f"MESHSEC_HEALTH_LISTEN; default {DEFAULT_METRICS_LISTEN}, loopback: another address is your call)",
    )
    serve.add_argument(
        "--server-name",
        action="append",
        default=_server_names_env(),
        metavar="NAME",
        help="extra DNS name or IP address for this replica's server certificate, repeatable, e.g. "
        "meshsec-controller.<ns>.svc (env MESHSEC_SERVER_NAMES, comma-separated; meshsec-controller, "
        "localhost and 127.0.0.1 are always in it)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=float(
            _env("MESHSEC_DRAIN_SECONDS", "5" if os.environ.get("KUBERNETES_SERVICE_HOST") else "0")
        ),
        help="on SIGTERM, report not ready (/readyz 503, gRPC health NOT_SERVING) this long before "
        "stopping, so load balancers and Services stop sending new connections first (env "
        "MESHSEC_DRAIN_SECONDS; default 5 in a Kubernetes pod, else 0)",
    )
    serve.add_argument("--heartbeat", type=float, default=5.0, help="Sync heartbeat interval, seconds")
    serve.add_argument("--agent-lease-ttl", type=int, default=10, help="agent liveness lease TTL, seconds")
    serve.add_argument(
        "--node-cert-hours", type=float, default=24 * 30, help="node certificate lifetime, hours"
    )
    serve.add_argument(
        "--ca-propagate",
        type=float,
        default=600.0,
        help="CA rollover: seconds a new CA is trusted everywhere before it signs (the old CA stays "
        "trusted one node-certificate lifetime + this after the switch)",
    )
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("etcd3aio").setLevel(logging.ERROR)
    logging.getLogger("grpc").setLevel(logging.WARNING)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


async def cmd_init(args: argparse.Namespace) -> int:
    from meshsec.controller.api.server import ControllerConfig, open_store

    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = create_kek(state / KEK_FILENAME)
    sealer = Sealer(load_kek(state / KEK_FILENAME))
    cfg = ControllerConfig(
        state_dir=state,
        etcd=_endpoints(args.etcd),
        etcd_client_port=args.etcd_client_port,
        etcd_peer_port=args.etcd_peer_port,
        etcd_ca_file=args.etcd_ca_file,
        etcd_cert_file=args.etcd_cert_file,
        etcd_key_file=args.etcd_key_file,
    )
    store, embedded = await open_store(cfg)
    try:
        ca, new_ca = None, False
        deadline = asyncio.get_running_loop().time() + 30
        while ca is None:
            try:
                ca, new_ca = await load_or_create_ca(store, sealer)
            except StoreError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        cert, key = ca.issue_keypair(ROLE_ADMIN, args.admin_name, dt.timedelta(days=args.admin_days))
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()
    admin = state / "admin"
    admin.mkdir(exist_ok=True, mode=0o700)
    _write(admin / "ca.pem", ca.bundle_pem, 0o644)
    _write(admin / "admin.pem", cert, 0o644)
    _write(admin / "admin-key.pem", key, 0o600)
    address = args.controller or (
        f"unix://{Path(args.socket).resolve()}" if args.socket else "127.0.0.1:7443"
    )
    conf = (
        f"controller: {address}\n"
        f"ca: {(admin / 'ca.pem').resolve()}\n"
        f"cert: {(admin / 'admin.pem').resolve()}\n"
        f"key: {(admin / 'admin-key.pem').resolve()}\n"
    )
    _write(admin / "meshctl.yaml", conf.encode(), 0o600)
    print(f"KEK: {state / KEK_FILENAME} ({'created' if created else 'kept'}; copy it to every replica)")
    print(f"CA: {'created' if new_ca else 'already in etcd'}; sha256 {ca.sha256}")
    print(f"admin credentials: {admin}; use: export MESHCTL_CONFIG={admin / 'meshctl.yaml'}")
    return 0


async def cmd_serve(args: argparse.Namespace) -> int:
    from meshsec.controller.api.server import Controller, ControllerConfig

    cfg = ControllerConfig(
        state_dir=args.state_dir,
        etcd=_endpoints(args.etcd),
        listen=args.listen or None,
        socket=Path(args.socket) if args.socket else None,
        enroll_listen=args.enroll_listen or None,
        enroll_socket=Path(args.enroll_socket) if args.enroll_socket else None,
        heartbeat_seconds=args.heartbeat,
        agent_lease_ttl=args.agent_lease_ttl,
        node_cert_lifetime=dt.timedelta(hours=args.node_cert_hours),
        etcd_client_port=args.etcd_client_port,
        etcd_peer_port=args.etcd_peer_port,
        singleton_jobs=args.singleton_jobs,
        election_ttl=args.election_ttl,
        ca_propagate=dt.timedelta(seconds=args.ca_propagate),
        etcd_ca_file=args.etcd_ca_file,
        etcd_cert_file=args.etcd_cert_file,
        etcd_key_file=args.etcd_key_file,
        server_names=list(args.server_name),
    )
    cfg.metrics_listen, cfg.metrics_required = _metrics_listen(args.metrics_listen)
    if args.replica:
        cfg.replica = args.replica
    controller = Controller(cfg)
    await controller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(controller, args.drain_seconds, stop)
    log.info("stopping")
    await controller.stop()
    return 0


async def drain(controller: object, seconds: float, stop: asyncio.Event) -> None:
    """Report not-ready, then keep serving `seconds` more (a second signal cuts it short).

    Kubernetes removes a terminating pod from Service endpoints asynchronously; serving on while
    /readyz says 503 lets the endpoint removal reach every node before connections are refused.
    """
    controller.probes.stopping()  # type: ignore[attr-defined]
    set_not_serving = getattr(controller, "set_not_serving", None)
    if set_not_serving is not None:
        await set_not_serving()
    if seconds <= 0:
        return
    log.info("SIGTERM: not ready; draining for %.1f s before stopping", seconds)
    stop.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _check_serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for timing flags that cannot work together."""
    from meshsec.controller.ca.rollover import policy_for

    if args.election_ttl < 2:
        parser.error("--election-ttl must be at least 2 seconds")
    from meshsec.controller.api.replica_credentials import split_server_names

    try:
        split_server_names(args.server_name)
    except ValueError as exc:
        parser.error(str(exc))
    if args.drain_seconds < 0:
        parser.error("--drain-seconds must not be negative")
    if args.node_cert_hours <= 0 or args.ca_propagate <= 0:
        parser.error("--node-cert-hours and --ca-propagate must be positive")
    try:
        policy_for(
            dt.timedelta(hours=args.node_cert_hours), propagate=dt.timedelta(seconds=args.ca_propagate)
        )
    except ValueError as exc:
        parser.error(f"--node-cert-hours/--ca-propagate: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        _check_serve(parser, args)
    _setup_logging(args.log_level)
    try:
        return asyncio.run(cmd_init(args) if args.command == "init" else cmd_serve(args))
    except (KekError, CANotInitialized, StoreError, RuntimeError, OSError) as exc:
        print(f"meshsec-controller: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
