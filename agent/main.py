"""`meshsec-agent`: enroll once, then keep this host's desired state from the controller (fail static).

Owns the command line and process setup: it runs the control-plane client with a pluggable
reconciler, by default the IKE/ESP runtime (meshsec.agent.runtime.host:reconciler), which gets the host
settings (host_options.py: TUN device and name, IKE/NAT-T ports, node IPs); `--reconciler record` only
records and reports.  In a Kubernetes pod it can announce the node's podCIDRs (k8s.py).  Tokens and
keys are never logged.

Exit codes: 0 stopped by signal, 1 enrollment refused or bad configuration, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path

from meshsec.agent import host_options, k8s
from meshsec.agent.controlplane import (
    AgentIdentity,
    ControlPlaneClient,
    DesiredStateCache,
    EnrollError,
    enroll,
    enroll_address,
)
from meshsec.agent.controlplane.renewal import recover_pending
from meshsec.agent.observability.metrics import AgentSources
from meshsec.agent.observability.probes import AgentProbes, bind_reconciler, probe_sources, start_endpoint

log = logging.getLogger("meshsec.agent")

DEFAULT_STATE_DIR = "/var/lib/meshsec/agent"
DEFAULT_CONTROLLER = "unix:///run/meshsec/controller.sock"
LOG_EVERY = 60.0  # seconds between repeated "unreachable" lines
DEFAULT_METRICS_LISTEN = "127.0.0.1:9451"


def _truthy(text: str) -> bool:
    """An env boolean as Helm renders it ("true"/"false"); anything else unset is an error."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"MESHSEC_ANNOUNCE_POD_CIDR: {text!r} is not a boolean (true or false)")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="meshsec-agent",
        description="meshsec agent: enrolls with the controller and applies this host's desired state.",
        epilog="exit codes: 0 stopped, 1 enrollment refused or bad configuration, 2 usage error",
    )
    p.add_argument(
        "--controller",
        default=env("MESHSEC_CONTROLLER", DEFAULT_CONTROLLER),
        help="controller address(es), comma-separated to fail over between replicas: unix:///path or "
        "host:port (env MESHSEC_CONTROLLER)",
    )
    p.add_argument(
        "--enroll-address",
        default=env("MESHSEC_ENROLL_ADDRESS", ""),
        help="enrollment endpoint (default: enroll.sock beside a unix --controller, or port+1 of a TCP one)",
    )
    p.add_argument("--node", default=env("MESHSEC_NODE", ""), help="this node's name (env MESHSEC_NODE)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("MESHSEC_AGENT_STATE_DIR", DEFAULT_STATE_DIR)),
        help="key, certificate, cached desired state (env MESHSEC_AGENT_STATE_DIR)",
    )
    p.add_argument(
        "--token",
        default=env("MESHSEC_TOKEN", ""),
        help="bootstrap token, needed only to enroll (env MESHSEC_TOKEN)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=Path(env("MESHSEC_TOKEN_FILE", "")) if env("MESHSEC_TOKEN_FILE") else None,
        help="file holding the bootstrap token, e.g. a mounted Secret; read only to enroll, and "
        "preferred to --token when it exists and is not empty (env MESHSEC_TOKEN_FILE)",
    )
    p.add_argument(
        "--ca-hash",
        default=env("MESHSEC_CA_HASH", ""),
        help="SHA-256 of the controller CA, pinned on first contact (env MESHSEC_CA_HASH)",
    )
    p.add_argument(
        "--ca-file",
        type=Path,
        default=Path(env("MESHSEC_CA_FILE", "")) if env("MESHSEC_CA_FILE") else None,
        help="the controller CA certificate instead of --ca-hash (env MESHSEC_CA_FILE)",
    )
    p.add_argument(
        "--reconciler",
        default=env("MESHSEC_RECONCILER", host_options.DEFAULT_RECONCILER),
        help="runtime (IKE + ESP on a TUN device, the default), record (only record and report the "
        "desired state), or module:factory building a Reconciler (env MESHSEC_RECONCILER)",
    )
    p.add_argument(
        "--tun-device",
        default=env("MESHSEC_TUN_DEVICE", host_options.DEFAULT_TUN_DEVICE),
        help="TUN clone device for the data plane (env MESHSEC_TUN_DEVICE)",
    )
    p.add_argument(
        "--tun-name",
        default=env("MESHSEC_TUN", host_options.DEFAULT_TUN_NAME),
        help="name of the TUN interface the agent creates (env MESHSEC_TUN)",
    )
    p.add_argument(
        "--ike-port",
        default=env("MESHSEC_IKE_PORT", str(host_options.DEFAULT_IKE_PORT)),
        help="UDP port for IKE (env MESHSEC_IKE_PORT)",
    )
    p.add_argument(
        "--natt-port",
        default=env("MESHSEC_NATT_PORT", str(host_options.DEFAULT_NATT_PORT)),
        help="UDP port for NAT-T, IKE and ESP-in-UDP (env MESHSEC_NATT_PORT)",
    )
    p.add_argument(
        "--node-ip",
        default=env("MESHSEC_NODE_IP", ""),
        help="this node's primary address, e.g. the Downward API's status.hostIP (env MESHSEC_NODE_IP)",
    )
    p.add_argument(
        "--node-ips",
        default=env("MESHSEC_NODE_IPS", ""),
        help="all of this node's addresses, comma-separated, e.g. status.hostIPs (env MESHSEC_NODE_IPS)",
    )
    p.add_argument(
        "--announce-pod-cidr",
        action=argparse.BooleanOptionalAction,
        default=env("MESHSEC_ANNOUNCE_POD_CIDR", ""),  # a string until run() checks it (_truthy)
        help="read this node's spec.podCIDRs from the Kubernetes API (in-cluster ServiceAccount) and "
        "announce them as its subnets; the spec must accept them (acceptAnnouncedSubnets) "
        "(env MESHSEC_ANNOUNCE_POD_CIDR=true)",
    )
    p.add_argument(
        "--kubernetes-sa-dir",
        type=Path,
        default=k8s.SA_DIR,
        help=argparse.SUPPRESS,  # where the ServiceAccount token and ca.crt are mounted (tests)
    )
    p.add_argument("--backoff-max", type=float, default=30.0, help="longest reconnect delay, seconds")
    p.add_argument(
        "--idle-timeout", type=float, default=20.0, help="reconnect when the controller is silent this long"
    )
    p.add_argument("--report-interval", type=float, default=10.0, help="status report interval, seconds")
    p.add_argument("--log-level", default=env("MESHSEC_LOG_LEVEL", "info"), help="debug|info|warning")
    p.add_argument(
        "--metrics-listen",
        default=None,
        help="HTTP host:port for /metrics, /healthz (loop alive), /readyz (enrolled and synced) ('' = none; "
        f"env MESHSEC_METRICS_LISTEN or MESHSEC_HEALTH_LISTEN; default {DEFAULT_METRICS_LISTEN}, loopback: "
        "with hostNetwork another address exposes it on the node, your call)",
    )
    return p


def _metrics_listen(flag: str | None) -> tuple[str, bool]:
    from meshsec.controller.observability.http import choose_listen

    return choose_listen(flag, DEFAULT_METRICS_LISTEN)  # ListenError is a ValueError


def bootstrap_token(args: argparse.Namespace) -> str:
    """The token: from --token-file when it holds one (a mounted Secret), else --token; never logged."""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            if not args.token:
                raise EnrollError(f"--token-file {args.token_file}: {exc.strerror}") from None
            token = ""
        if token:
            return token
        if not args.token:
            raise EnrollError(f"--token-file {args.token_file} is empty")
    return str(args.token)


async def _enroll(args: argparse.Namespace, identity: AgentIdentity) -> None:
    if not args.token and args.token_file is None:
        raise EnrollError(f"not enrolled yet ({identity.cert_path} missing) and no --token given")
    token = bootstrap_token(args)
    ca_pem = args.ca_file.read_bytes() if args.ca_file else None
    address = args.enroll_address or enroll_address(args.controller)
    delay, last_log = 0.5, -LOG_EVERY
    while True:
        try:
            await enroll(address, args.node, token, identity, ca_pem=ca_pem, ca_sha256=args.ca_hash)
            log.info("enrolled as %r", args.node)
            return
        except EnrollError as exc:
            if not exc.retryable:
                raise
            if time.monotonic() - last_log >= LOG_EVERY:  # one line, not one per attempt
                log.warning("%s; retrying", exc)
                last_log = time.monotonic()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, args.backoff_max)


def host_settings(args: argparse.Namespace) -> host_options.HostOptions:
    """The data plane's host settings from flags/env (ValueError names the bad one)."""
    return host_options.build(
        tun_device=args.tun_device,
        ike_port=args.ike_port,
        natt_port=args.natt_port,
        node_ip=args.node_ip,
        node_ips=args.node_ips,
        state_dir=args.state_dir,
        tun_name=args.tun_name,
    )


async def run(args: argparse.Namespace) -> int:
    args.host = host_settings(args)  # bad settings fail before anything starts
    if isinstance(args.announce_pod_cidr, str):
        args.announce_pod_cidr = _truthy(args.announce_pod_cidr)
    args.kubernetes = (
        k8s.InCluster.from_env(sa_dir=args.kubernetes_sa_dir) if args.announce_pod_cidr else None
    )
    identity = AgentIdentity(args.state_dir)
    recover_pending(identity)  # finish a key/cert swap a crash interrupted, before anything reads them
    probes = AgentProbes(identity.enrolled)
    sources = probe_sources(probes, args.node)
    listen, required = _metrics_listen(args.metrics_listen)
    endpoint = start_endpoint(listen, probes, sources, required=required)
    ticker = asyncio.create_task(probes.tick_forever(), name="liveness")
    try:
        return await _run(args, identity, probes, sources)
    finally:
        probes.stopping = True
        ticker.cancel()
        if endpoint is not None:
            endpoint.close()


async def _run(
    args: argparse.Namespace, identity: AgentIdentity, probes: AgentProbes, sources: AgentSources
) -> int:
    if not identity.enrolled():
        if not args.node:
            raise EnrollError("--node is required to enroll")
        await _enroll(args, identity)
    node = identity.node_name()
    if args.node and args.node != node:
        raise EnrollError(f"state dir {args.state_dir} holds the identity of {node!r}, not {args.node!r}")
    reconciler = host_options.make_reconciler(args.reconciler, args.host)
    client = ControlPlaneClient(
        address=args.controller,
        node=node,
        identity=identity,
        cache=DesiredStateCache(args.state_dir / "desired.pb"),
        reconciler=reconciler,
        backoff_max=args.backoff_max,
        idle_timeout=args.idle_timeout,
        report_interval=args.report_interval,
        # A data plane that wants renewed certificates for new IKE_AUTHs exposes
        # certificate_renewed(renewal.Renewed); established SAs are not touched.
        on_renewed=getattr(reconciler, "certificate_renewed", None),
    )
    probes.client = client
    sources.node = node
    bind_reconciler(sources, reconciler, asyncio.get_running_loop())
    task = asyncio.create_task(client.run())
    announcer = None
    if args.kubernetes is not None:
        announcer = asyncio.create_task(
            k8s.poll_pod_cidrs(args.kubernetes, args.node or node, client.announce), name="pod-cidr"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    probes.stopping = True  # /readyz fails while SAs are being deleted
    task.cancel()
    if announcer is not None:
        announcer.cancel()
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises what ended the client, if it was not the signal
    finally:
        close = getattr(reconciler, "close", None)
        if close is not None:  # e.g. the data plane: DELETE every SA, remove routes and TUN
            result = close()
            if asyncio.iscoroutine(result):
                await result
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(run(args))
    except (EnrollError, OSError, ValueError, k8s.KubernetesError) as exc:
        print(f"meshsec-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
