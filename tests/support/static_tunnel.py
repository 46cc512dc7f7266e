"""Run the meshsec data plane with static keys (no IKE) inside a namespace, for tests and benchmarks.

    ip netns exec NS python -m tests.support.static_tunnel --config tunnel.json

The JSON config (see `endpoint_config`) names the TUN, its addresses and routes, the UDP listen
addresses, the peers and the SAs with hex keys.  The process prints "READY" once packets flow,
rewrites `counters_file` (JSON: data-plane counters + per-SA counters) four times a second, and on
SIGTERM/SIGINT removes everything it created.  Test support only: the agent proper gets its SAs from
the IKE engine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import signal
import sys
import time
from typing import Any

from meshsec.agent.dataplane import Dataplane
from meshsec.agent.esp import Mode, SaParams, TrafficSelector, TransportAddresses
from meshsec.agent.esp.mtu import tunnel_mtu
from meshsec.agent.esp.transforms import transform_spec
from meshsec.agent.netcfg.links import NetConfig
from meshsec.agent.netcfg.tun import open_tun

#: Transform names as strongSwan spells them -> (encr_id, key_bits, integ_id, keymat bytes (enc, integ)).
TRANSFORMS: dict[str, tuple[int, int, int, int, int]] = {
    "aes128gcm16": (20, 128, 0, 20, 0),
    "aes256gcm16": (20, 256, 0, 36, 0),
    "chacha20poly1305": (28, 256, 0, 36, 0),
    "aes128-sha256": (12, 128, 12, 16, 32),
    "aes256-sha256": (12, 256, 12, 32, 32),
}


def sa_json(
    transform: str, spi: int, *, mode: str = "tunnel", esn: bool = False, transport: dict | None = None
) -> dict[str, Any]:
    """A fresh random SA description (both ends must use the same dict, one as out, one as in)."""
    encr, bits, integ, enc_len, integ_len = TRANSFORMS[transform]
    return {
        "spi": spi,
        "transform": transform,
        "encr_id": encr,
        "key_bits": bits,
        "integ_id": integ,
        "enc_key": secrets.token_hex(enc_len),
        "integ_key": secrets.token_hex(integ_len),
        "mode": mode,
        "esn": esn,
        "transport": transport,
    }


def sa_params(d: dict[str, Any], *, local: str | None = None, remote: str | None = None) -> SaParams:
    """SaParams from `sa_json`; for transport mode `local`/`remote` are this end's view."""
    mode = Mode(d["mode"])
    transport = None
    if mode is Mode.TRANSPORT:
        assert local and remote, "transport mode needs local/remote addresses"
        transport = TransportAddresses(ipaddress.ip_address(local), ipaddress.ip_address(remote))
    return SaParams(
        spi=d["spi"],
        encr_id=d["encr_id"],
        key_bits=d["key_bits"],
        integ_id=d["integ_id"],
        enc_key=bytes.fromhex(d["enc_key"]),
        integ_key=bytes.fromhex(d["integ_key"]),
        mode=mode,
        esn=d.get("esn", False),
        replay_window=d.get("replay_window", 1024),
        transport=transport,
    )


def endpoint_config(
    *,
    tun: str,
    underlay: str,
    peer_underlay: str,
    sa_out: dict[str, Any],
    sa_in: dict[str, Any],
    mode: str = "tunnel",
    overlay: str | None = None,
    peer_overlay_net: str | None = None,
    local_overlay_net: str | None = None,
    peer_port: int = 4500,
    port: int = 4500,
    vnet_hdr: bool = True,
    tso: bool = False,
    link_mtu: int | None = None,
    counters_file: str = "",
    tun_mtu: int | None = None,
) -> dict[str, Any]:
    """One end of a statically keyed tunnel.

    Tunnel mode: TUN address `overlay` (CIDR), selectors local_overlay_net <-> peer_overlay_net, route
    peer_overlay_net into the TUN.  Transport mode: the peer's underlay address is routed into the TUN
    (policy routing keeps our own ESP datagrams out of it) and the selectors are host-to-host.
    """
    if mode == "tunnel":
        assert overlay and peer_overlay_net and local_overlay_net
        selectors = [[local_overlay_net, peer_overlay_net]]
        routes = [peer_overlay_net]
        addresses = [overlay]
    else:
        bits = 128 if ":" in underlay else 32
        selectors = [[f"{underlay}/{bits}", f"{peer_underlay}/{bits}"]]
        routes = [f"{peer_underlay}/{bits}"]
        addresses = []
    return {
        "tun": {"name": tun, "addresses": addresses, "vnet_hdr": vnet_hdr, "tso": tso},
        "listen": [underlay],
        "port": port,
        "link_mtu": link_mtu,
        "routes": routes,
        "route_src": underlay if mode == "transport" else None,
        "peer": {"endpoint": [peer_underlay, peer_port]},
        "outbound": {"sa": sa_out, "selectors": selectors},
        "inbound": {"sa": sa_in},
        "local": underlay,
        "remote": peer_underlay,
        "counters_file": counters_file,
        "tun_mtu": tun_mtu,  # tests only: a TUN MTU above the SA's limit exercises ICMP too-big
    }


def write_counters(dp: Dataplane, path: str) -> None:
    data: dict[str, Any] = dp.counters.snapshot()
    sas: dict[str, Any] = {}
    out = dp.outbound_sa("out")
    if out is not None:
        sas["out"] = dataclasses.asdict(out.counters)
    for spi in dp.inbound_spis():
        sa = dp.inbound_sa(spi)
        if sa is not None:
            sas[f"in-{spi:08x}"] = dataclasses.asdict(sa.counters)
    data["sas"] = sas
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def run(cfg: dict[str, Any]) -> None:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    t = cfg["tun"]
    mode = Mode(cfg["outbound"]["sa"]["mode"])
    outer = 6 if ":" in cfg["local"] else 4
    out_d, in_d = cfg["outbound"]["sa"], cfg["inbound"]["sa"]
    specs = [transform_spec(d["encr_id"], d["key_bits"], d["integ_id"]) for d in (out_d, in_d)]
    tun = open_tun(t["name"], vnet_hdr=t["vnet_hdr"], tso=t["tso"])
    with contextlib.ExitStack() as stack:
        stack.callback(tun.close)
        net = stack.enter_context(NetConfig(tun.name))
        link_mtu = cfg.get("link_mtu") or net.underlay_mtu(cfg["remote"])
        mtu = cfg.get("tun_mtu") or tunnel_mtu(link_mtu, specs, outer_family=outer, mode=mode)
        net.set_up(mtu)
        for cidr in t["addresses"]:
            net.add_address(cidr)
        for cidr in cfg["routes"]:
            net.add_route(cidr, src=cfg.get("route_src"))
        net.add_bypass_rules()
        dp = Dataplane(tun, listen=cfg["listen"], port=cfg["port"], ike_port=None, mark=net.mark)
        stack.callback(dp.close)
        dp.set_peer("peer", tuple(cfg["peer"]["endpoint"]), link_mtu)  # type: ignore[arg-type]
        local, remote = cfg["local"], cfg["remote"]
        sels = [TrafficSelector.of(a, b) for a, b in cfg["outbound"]["selectors"]]
        dp.add_outbound_sa("out", sa_params(out_d, local=local, remote=remote), sels, "peer")
        dp.add_inbound_sa(sa_params(in_d, local=local, remote=remote))
        dp.start()
        path = cfg.get("counters_file") or ""
        print("READY", mtu, flush=True)
        while not stop:
            if path:
                write_counters(dp, path)
            time.sleep(0.25)
        if path:
            write_counters(dp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON file as built by endpoint_config()")
    args = parser.parse_args(argv)
    with open(args.config) as fh:
        cfg = json.load(fh)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------- harness used by tests and bench
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Addressing:
    """Test addresses of a two-host tunnel for one family (underlay and overlay both in test ranges)."""

    family: int
    underlay: tuple[str, str]
    prefix: int
    overlay: tuple[str, str]
    overlay_nets: tuple[str, str]


ADDRESSING = {
    4: Addressing(
        4,
        ("198.18.0.1", "198.18.0.2"),
        24,
        ("198.19.1.1/24", "198.19.2.1/24"),
        ("198.19.1.0/24", "198.19.2.0/24"),
    ),
    6: Addressing(
        6,
        ("fd00:18::1", "fd00:18::2"),
        64,
        ("fd00:19:1::1/64", "fd00:19:2::1/64"),
        ("fd00:19:1::/64", "fd00:19:2::/64"),
    ),
}


class StaticTunnel:
    """One `python -m tests.support.static_tunnel` process in a namespace; killed with the namespace."""

    def __init__(self, ns: Any, cfg: dict[str, Any], workdir: str, runner: list[str] | None = None) -> None:
        self.ns = ns
        self.cfg = cfg
        self.workdir = workdir
        self.name = cfg["tun"]["name"]
        self.config_path = os.path.join(workdir, f"{self.name}.json")
        self.cfg["counters_file"] = os.path.join(workdir, f"{self.name}.counters.json")
        self.runner = runner or [sys.executable, "-m", "tests.support.static_tunnel"]
        self.proc: Any = None
        self.mtu = 0

    def start(self, timeout: float = 15) -> StaticTunnel:
        import subprocess

        with open(self.config_path, "w") as fh:
            json.dump(self.cfg, fh)
        self.proc = self.ns.popen(
            [*self.runner, "--config", self.config_path],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(self.workdir, f"{self.name}.stderr"), "w"),  # noqa: SIM115
            text=True,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY") or not line:
                break
        if not line.startswith("READY"):
            with open(os.path.join(self.workdir, f"{self.name}.stderr")) as fh:
                raise RuntimeError(f"static tunnel {self.name} failed to start: {fh.read()[-2000:]}")
        self.mtu = int(line.split()[1])
        return self

    def counters(self) -> dict[str, Any]:
        with open(self.cfg["counters_file"]) as fh:
            return json.load(fh)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()


def tunnel_pair_configs(
    family: int, mode: str, transform: str, *, tag: str = "ms", esn: bool = False, **kw: Any
) -> tuple[dict[str, Any], dict[str, Any], Addressing]:
    """Matching configs for hosts a and b (SPIs 0x1000a / 0x1000b, fresh random keys)."""
    addr = ADDRESSING[family]
    a_ul, b_ul = addr.underlay
    a_to_b = sa_json(transform, 0x1000B, mode=mode, esn=esn)
    b_to_a = sa_json(transform, 0x1000A, mode=mode, esn=esn)
    common = {"mode": mode, **kw}
    cfg_a = endpoint_config(
        tun=f"{tag}a",
        underlay=a_ul,
        peer_underlay=b_ul,
        sa_out=a_to_b,
        sa_in=b_to_a,
        overlay=addr.overlay[0],
        local_overlay_net=addr.overlay_nets[0],
        peer_overlay_net=addr.overlay_nets[1],
        **common,
    )
    cfg_b = endpoint_config(
        tun=f"{tag}b",
        underlay=b_ul,
        peer_underlay=a_ul,
        sa_out=b_to_a,
        sa_in=a_to_b,
        overlay=addr.overlay[1],
        local_overlay_net=addr.overlay_nets[1],
        peer_overlay_net=addr.overlay_nets[0],
        **common,
    )
    return cfg_a, cfg_b, addr
