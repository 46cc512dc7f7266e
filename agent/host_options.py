"""Host settings of one agent that the data plane needs and the control plane does not: the TUN clone
device and interface name, the IKE and NAT-T ports, the node's own addresses (a DaemonSet gets them
from the Downward API).

Owns parsing and validating them (flags and MESHSEC_* env, see main.py), the names of the built-in
reconcilers (`runtime`, the default, and `record`), and handing the settings to the reconciler
factory.  It must not open devices or sockets: the runtime (agent/runtime) does that.
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TUN_DEVICE = "/dev/net/tun"
DEFAULT_IKE_PORT = 500
DEFAULT_NATT_PORT = 4500
DEFAULT_TUN_NAME = "meshsec0"

#: `--reconciler NAME` for the built-in ones.  `runtime` (IKE + ESP on a TUN device) is what a host
#: runs; `record` only records and reports the desired state (tests of the control plane alone, which
#: must not create TUN devices or bind 500/4500 where they run).
RECONCILERS = {
    "runtime": "meshsec.agent.runtime.host:reconciler",
    "record": "meshsec.agent.controlplane:RecordingReconciler",
}
DEFAULT_RECONCILER = "runtime"


class HostOptionError(ValueError):
    """A host setting is malformed; the message names the flag and its env var."""


@dataclass(frozen=True)
class HostOptions:
    """What `--reconciler module:factory` receives as `host=` when its factory takes that keyword."""

    tun_device: str = DEFAULT_TUN_DEVICE  # the TUN clone device (a CharDevice hostPath in Kubernetes)
    ike_port: int = DEFAULT_IKE_PORT  # UDP port for IKE (RFC 7296); NAT-T moves to natt_port
    natt_port: int = DEFAULT_NATT_PORT  # UDP port for IKE and ESP-in-UDP after NAT detection (RFC 3948)
    node_ip: str = ""  # the node's primary address (status.hostIP); "" = unknown
    node_ips: tuple[str, ...] = field(default_factory=tuple)  # every address of the node, both families
    state_dir: Path | None = None  # node-key.pem and node.pem, for IKE certificate authentication
    tun_name: str = DEFAULT_TUN_NAME  # the TUN interface the runtime creates (at most 15 bytes)

    def is_default(self) -> bool:
        return self == HostOptions(state_dir=self.state_dir)


def parse_port(text: str, flag: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise HostOptionError(f"{flag}: {text!r} is not a port number (1-65535)")
    return port


def parse_ip(text: str, flag: str) -> str:
    """One address, canonical; "" stays "" (not given)."""
    text = text.strip()
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise HostOptionError(f"{flag}: {text!r} is not an IP address") from None


def parse_ips(text: str, flag: str) -> tuple[str, ...]:
    """Comma- or space-separated addresses (the Downward API renders status.podIPs as "a,b")."""
    out = [parse_ip(item, flag) for item in text.replace(",", " ").split()]
    return tuple(dict.fromkeys(ip for ip in out if ip))


def build(
    *,
    tun_device: str,
    ike_port: str | int,
    natt_port: str | int,
    node_ip: str,
    node_ips: str,
    state_dir: Path | None,
    tun_name: str = DEFAULT_TUN_NAME,
) -> HostOptions:
    """HostOptions from the raw flag values; HostOptionError for the first bad one."""
    if not tun_device.startswith("/"):
        raise HostOptionError(f"--tun-device: {tun_device!r} is not an absolute path")
    if not 0 < len(tun_name.encode()) <= 15 or "/" in tun_name or any(c.isspace() for c in tun_name):
        raise HostOptionError(
            f"--tun-name (env MESHSEC_TUN): {tun_name!r} is not an interface name "
            "(1-15 bytes, no '/' or spaces)"
        )
    ike = parse_port(str(ike_port), "--ike-port (env MESHSEC_IKE_PORT)")
    natt = parse_port(str(natt_port), "--natt-port (env MESHSEC_NATT_PORT)")
    if ike == natt:
        raise HostOptionError(f"--ike-port and --natt-port must differ (both {ike})")
    primary = parse_ip(node_ip, "--node-ip (env MESHSEC_NODE_IP)")
    ips = parse_ips(node_ips, "--node-ips (env MESHSEC_NODE_IPS)")
    if primary and primary not in ips:
        ips = (primary, *ips)
    return HostOptions(tun_device, ike, natt, primary, ips, state_dir, tun_name)


def make_reconciler(spec: str, host: HostOptions, default: Callable[..., Any] | None = None) -> Any:
    """The reconciler of `--reconciler NAME|module:factory`: a built-in name (RECONCILERS), a factory
    path, or, when empty, default() (the runtime when no default is given).  The factory gets `host=`
    when it takes that keyword; otherwise non-default host settings are ignored, said once."""
    spec = RECONCILERS.get(spec, spec)
    if not spec and default is not None:
        factory: Callable[..., Any] = default
    else:
        spec = spec or RECONCILERS[DEFAULT_RECONCILER]
        module, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr or "Reconciler")
        except (ImportError, AttributeError, ValueError) as exc:
            names = ", ".join(RECONCILERS)
            raise HostOptionError(f"--reconciler {spec!r}: {exc} (use {names} or module:factory)") from None
    try:
        accepts = "host" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no keywords known
        accepts = False
    if accepts:
        return factory(host=host)
    if not host.is_default():
        log.warning(
            "reconciler %s does not take host settings: --tun-device/--ike-port/--natt-port/--node-ip(s) "
            "are not applied",
            spec or "(default)",
        )
    return factory()
