"""The host settings meshsec-agent parses reach the runtime: flags/env -> HostOptions -> the default
reconciler's RuntimeOptions; the port map between the configured ports and the IKE engine's 500/4500;
the node's addresses as listen addresses.  Pure logic: no sockets, no TUN (the system test
tests/system/test_agent_host_options.py shows the same settings on the wire)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshsec.agent import host_options
from meshsec.agent.controlplane import RecordingReconciler
from meshsec.agent.host_options import HostOptionError, HostOptions, make_reconciler
from meshsec.agent.main import build_parser, host_settings
from meshsec.agent.runtime import host
from meshsec.agent.runtime.host import AgentRuntime, RuntimeOptions, reconciler
from meshsec.agent.runtime.ports import MappedDataplane, PortMap
from meshsec.api.v1 import config_pb2


def test_flags_reach_the_runtime_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MESHSEC_RECONCILER", "MESHSEC_TUN", "MESHSEC_IKE_PORT", "MESHSEC_NATT_PORT"):
        monkeypatch.delenv(var, raising=False)
    args = build_parser().parse_args(
        [
            "--state-dir", str(tmp_path),
            "--tun-device", "/run/meshsec/tun",
            "--tun-name", "msx0",
            "--ike-port", "1500",
            "--natt-port", "14500",
            "--node-ip", "198.18.0.7",
            "--node-ips", "fd00:18::7,198.18.0.7",
        ]
    )  # fmt: skip
    assert args.reconciler == "runtime"  # the runtime is the default, not record-and-report
    made = make_reconciler(args.reconciler, host_settings(args))
    assert isinstance(made, AgentRuntime)
    assert made.opts == RuntimeOptions(
        state_dir=tmp_path,
        tun_name="msx0",
        tun_device="/run/meshsec/tun",
        ike_port=1500,
        natt_port=14500,
        listen=("198.18.0.7", "fd00:18::7"),
    )


def test_tun_name_from_env_and_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSEC_TUN", "mscp0")
    assert host_settings(build_parser().parse_args(["--state-dir", str(tmp_path)])).tun_name == "mscp0"
    for bad in ("", "a-name-longer-than-15", "a/b", "a b"):
        with pytest.raises(HostOptionError, match="--tun-name"):
            host_options.build(
                tun_device="/dev/net/tun",
                ike_port=500,
                natt_port=4500,
                node_ip="",
                node_ips="",
                state_dir=None,
                tun_name=bad,
            )
    assert not HostOptions(tun_name="x0").is_default()
    assert HostOptions(state_dir=tmp_path).is_default()


def test_reconciler_names_and_a_bad_one(tmp_path: Path) -> None:
    hopts = HostOptions(state_dir=tmp_path)
    assert isinstance(make_reconciler("record", hopts), RecordingReconciler)
    assert isinstance(make_reconciler("runtime", hopts), AgentRuntime)
    assert isinstance(make_reconciler("", hopts), AgentRuntime)
    assert isinstance(make_reconciler("meshsec.agent.runtime.host:reconciler", hopts), AgentRuntime)
    for bad in ("nosuch.module:x", "meshsec.agent.runtime.host:nosuch", ":x"):
        with pytest.raises(HostOptionError, match=r"--reconciler .*use runtime, record or module:factory"):
            make_reconciler(bad, hopts)


def test_factory_without_host_uses_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSEC_AGENT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MESHSEC_TUN", "envtun0")
    r = reconciler()
    o = r.opts
    assert (o.state_dir, o.tun_name, o.ike_port, o.natt_port) == (tmp_path, "envtun0", 500, 4500)


def _config(*endpoints: str) -> config_pb2.NodeConfig:
    cfg = config_pb2.NodeConfig()
    cfg.peers.add(name="p", endpoints=list(endpoints))
    return cfg


def test_node_ips_listen_first_of_each_family() -> None:
    listen = host._node_listen
    assert listen((), _config("198.18.0.2")) == []  # none given: the runtime binds 0.0.0.0
    assert listen(("198.18.0.7", "198.18.0.8", "fd00::7"), _config("198.18.0.2")) == ["198.18.0.7", "fd00::7"]
    # a peer needs IPv6 and the node named no IPv6 address: any IPv6 address too
    assert listen(("198.18.0.7",), _config("[fd00::2]:500")) == ["198.18.0.7", "::"]


_PORTS = st.integers(1, 65535)


@given(ike=_PORTS, natt=_PORTS, port=_PORTS)
def test_port_map_round_trips(ike: int, natt: int, port: int) -> None:
    if ike == natt:
        return
    pm = PortMap(ike, natt)
    assert pm.to_wire(("198.18.0.2", 500)) == ("198.18.0.2", ike)
    assert pm.to_wire(("198.18.0.2", 4500)) == ("198.18.0.2", natt)
    assert pm.to_engine(("198.18.0.2", ike)) == ("198.18.0.2", 500)
    assert pm.to_engine(("198.18.0.2", natt)) == ("198.18.0.2", 4500)
    assert pm.local_to_engine(natt) == 4500 and pm.local_to_engine(ike) == 500
    if port not in (ike, natt, 500, 4500):  # a NAT's mapped port passes unchanged both ways
        assert pm.to_wire(("198.18.0.2", port)) == pm.to_engine(("198.18.0.2", port)) == ("198.18.0.2", port)
    assert PortMap().identity and not PortMap(1500, 4500).identity


class _FakeDataplane:
    """Records the calls the runtime and SaInstaller make (pure logic: no sockets)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.handler: Any = None
        self.counters = "counters"

    def set_ike_handler(self, handler: Any) -> None:
        self.handler = handler

    def send_ike(self, message: bytes, remote: tuple[str, int], *, nat_t: bool = True) -> None:
        self.calls.append(("ike", message, remote, nat_t))

    def send_keepalive(self, remote: tuple[str, int]) -> None:
        self.calls.append(("keepalive", remote))

    def set_peer(self, peer_id: str, endpoint: tuple[str, int], link_mtu: int = 1500) -> None:
        self.calls.append(("peer", peer_id, endpoint, link_mtu))

    def update_peer_endpoint(self, peer_id: str, endpoint: tuple[str, int]) -> None:
        self.calls.append(("update", peer_id, endpoint))


def test_mapped_dataplane_shows_the_engine_rfc_ports_and_the_wire_the_configured_ones() -> None:
    fake = _FakeDataplane()
    dp = MappedDataplane(fake, PortMap(1500, 14500))
    got: list[tuple[bytes, tuple[str, int], int]] = []
    dp.set_ike_handler(lambda m, a, p: got.append((m, a, p)))
    fake.handler(b"init", ("198.18.0.2", 1500), 1500)  # bare IKE from a peer on the mesh's port
    fake.handler(b"auth", ("198.18.0.2", 14500), 14500)  # NAT-T from the peer's NAT-T port
    fake.handler(b"nat", ("198.18.0.9", 33000), 14500)  # from behind a NAT: its port stays
    assert got == [
        (b"init", ("198.18.0.2", 500), 500),
        (b"auth", ("198.18.0.2", 4500), 4500),
        (b"nat", ("198.18.0.9", 33000), 4500),
    ]
    dp.send_ike(b"x", ("198.18.0.2", 500), nat_t=False)
    dp.send_ike(b"y", ("198.18.0.2", 4500))
    dp.send_keepalive(("198.18.0.2", 4500))
    dp.set_peer("p", ("198.18.0.2", 4500), 1400)
    dp.update_peer_endpoint("p", ("198.18.0.9", 33000))
    assert fake.calls == [
        ("ike", b"x", ("198.18.0.2", 1500), False),
        ("ike", b"y", ("198.18.0.2", 14500), True),
        ("keepalive", ("198.18.0.2", 14500)),
        ("peer", "p", ("198.18.0.2", 14500), 1400),
        ("update", "p", ("198.18.0.9", 33000)),
    ]
    assert dp.counters == "counters"  # everything else is the data plane's own
    dp.set_ike_handler(None)
    assert fake.handler is None
