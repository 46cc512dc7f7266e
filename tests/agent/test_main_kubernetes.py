"""`meshsec-agent` as the chart runs it: the bootstrap token from a mounted file (never logged), this
node's podCIDRs read from the Kubernetes API with the pod's ServiceAccount and announced to a real
controller, host settings from MESHSEC_* env.  Real processes, real etcd, a stand-in API server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from meshsec.agent.host_options import HostOptionError, HostOptions, build, make_reconciler
from meshsec.agent.main import build_parser, main
from meshsec.api.v1 import spec_pb2
from meshsec.controller.desired.announced import announced_key
from meshsec.controller.store import Keys

from tests.controller.harness import Proc, apply, init_state, mesh_yaml, replica, token
from tests.support.etcd import EtcdCluster
from tests.support.kube_api import FakeKubeAPI, node

POD_CIDRS = ["198.19.210.0/24", "fd00:210::/64"]


@pytest.fixture
def etcd() -> EtcdCluster:
    with EtcdCluster(1) as cluster:
        yield cluster


def test_daemonset_agent_enrolls_from_token_file_and_announces_its_pod_cidrs(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async def body() -> None:
        state = tmp_path / "c"
        await init_state(state, etcd.endpoints)
        async with replica(state, etcd.endpoints) as c:
            assert c.store is not None and c.state is not None
            await apply(c.address, state, mesh_yaml({"node-a": 1, "node-b": 2}))
            spec = spec_pb2.MeshSpec.FromString((await c.store.get(Keys.SPEC)).value)  # type: ignore[union-attr]
            spec.nodes[0].accept_announced_subnets = True  # node-a (the loader's field is pending)
            await c.store.put(Keys.SPEC, spec.SerializeToString(deterministic=True))
            tok = await token(c.address, state)
            token_file = tmp_path / "secret" / "token"
            token_file.parent.mkdir()
            token_file.write_text(tok.token + "\n")  # as a Secret volume holds it
            agent_dir = tmp_path / "agent"
            with FakeKubeAPI({"node-a": node("node-a", POD_CIDRS)}) as api:
                args = [
                    sys.executable, "-m", "meshsec.agent.main",
                    "--controller", f"unix://{c.cfg.socket}",
                    "--enroll-address", f"unix://{c.cfg.enroll_socket}",
                    "--metrics-listen", "",
                    "--kubernetes-sa-dir", str(api.sa_dir),
                    "--report-interval", "0.5",
                    "--log-level", "debug",
                    "--reconciler", "record",  # root namespace: no TUN, no 500/4500
                ]  # fmt: skip
                env = {
                    **api.env,
                    "MESHSEC_NODE": "node-a",
                    "MESHSEC_AGENT_STATE_DIR": str(agent_dir),
                    "MESHSEC_TOKEN_FILE": str(token_file),
                    "MESHSEC_TOKEN": "",
                    "MESHSEC_CA_HASH": tok.ca_cert_sha256,
                    "MESHSEC_ANNOUNCE_POD_CIDR": "true",
                    "MESHSEC_TUN_DEVICE": "/dev/net/tun",
                    "MESHSEC_IKE_PORT": "500",
                    "MESHSEC_NATT_PORT": "4500",
                    "MESHSEC_NODE_IP": "198.18.0.1",
                    "MESHSEC_NODE_IPS": "198.18.0.1,fd00:18::1",
                }
                agent_dir.mkdir()
                proc = Proc(args, tmp_path / "agent.log", env)
                try:
                    await asyncio.to_thread(proc.wait_log, "enrolled as 'node-a'", 20)
                    for _ in range(200):
                        kv = await c.store.get(announced_key("node-a"))
                        if kv is not None:
                            break
                        await asyncio.sleep(0.05)
                    assert kv is not None, proc.log()
                    for _ in range(100):
                        b_cfg = await c.state.snapshot("node-b")
                        routed = {ts for p in b_cfg.peers for ch in p.children for ts in ch.remote_ts}
                        if set(POD_CIDRS) <= routed:
                            break
                        await asyncio.sleep(0.05)
                    assert set(POD_CIDRS) <= routed
                    assert api.requests[0] == ("/api/v1/nodes/node-a", f"Bearer {api.token}")
                    assert proc.stop() == 0
                finally:
                    proc.kill()
            log = proc.log()
            assert tok.token not in log and tok.token.split(".")[1] not in log
            assert api.token not in log
            assert "announcing podCIDRs of node 'node-a'" in log

    asyncio.run(asyncio.wait_for(body(), 90))


def test_token_file_is_preferred_and_its_problems_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshsec.agent.main import bootstrap_token

    f = tmp_path / "token"
    f.write_text("  abcdefgh.secret-from-file \n")
    args = build_parser().parse_args(["--token", "env-token", "--token-file", str(f)])
    assert bootstrap_token(args) == "abcdefgh.secret-from-file"
    f.write_text("")  # an empty Secret key: fall back to --token
    assert bootstrap_token(args) == "env-token"
    monkeypatch.setenv("MESHSEC_TOKEN_FILE", str(tmp_path / "absent"))
    monkeypatch.delenv("MESHSEC_TOKEN", raising=False)
    base = [
        "--state-dir",
        str(tmp_path / "s"),
        "--node",
        "n",
        "--controller",
        "127.0.0.1:1",
        "--metrics-listen",
        "",
    ]
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "absent") in err
    monkeypatch.setenv("MESHSEC_TOKEN_FILE", str(f))
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is empty" in err


def test_host_settings_from_env_and_their_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHSEC_TUN_DEVICE", "/dev/net/tun2")
    monkeypatch.setenv("MESHSEC_IKE_PORT", "1500")
    monkeypatch.setenv("MESHSEC_NATT_PORT", "14500")
    monkeypatch.setenv("MESHSEC_NODE_IP", "198.18.0.7")
    monkeypatch.setenv("MESHSEC_NODE_IPS", "fd00:18::7, 198.18.0.7")
    from meshsec.agent.main import host_settings

    host = host_settings(build_parser().parse_args(["--state-dir", str(tmp_path)]))
    assert host == HostOptions(
        "/dev/net/tun2", 1500, 14500, "198.18.0.7", ("fd00:18::7", "198.18.0.7"), tmp_path
    )
    assert build(
        tun_device="/dev/net/tun",
        ike_port=500,
        natt_port=4500,
        node_ip="198.18.0.9",
        node_ips="",
        state_dir=None,
    ).node_ips == ("198.18.0.9",)
    for kw, match in (
        ({"ike_port": "0"}, "--ike-port"),
        ({"natt_port": "http"}, "--natt-port"),
        ({"ike_port": "4500"}, "must differ"),
        ({"node_ip": "node-1"}, "--node-ip"),
        ({"node_ips": "198.18.0.1,bogus"}, "--node-ips"),
        ({"tun_device": "tun"}, "--tun-device"),
    ):
        raw = {
            "tun_device": "/dev/net/tun",
            "ike_port": "500",
            "natt_port": "4500",
            "node_ip": "",
            "node_ips": "",
        }
        with pytest.raises(HostOptionError, match=match):
            build(**{**raw, **kw}, state_dir=None)  # type: ignore[arg-type]
    # Through main: exit 1, one line, before anything starts.
    monkeypatch.setenv("MESHSEC_IKE_PORT", "70000")
    assert main(["--state-dir", str(tmp_path), "--metrics-listen", ""]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ike-port" in err
    monkeypatch.setenv("MESHSEC_IKE_PORT", "500")
    monkeypatch.setenv("MESHSEC_ANNOUNCE_POD_CIDR", "maybe")
    assert main(["--state-dir", str(tmp_path), "--metrics-listen", ""]) == 1
    assert "MESHSEC_ANNOUNCE_POD_CIDR" in capsys.readouterr().err
    monkeypatch.setenv("MESHSEC_ANNOUNCE_POD_CIDR", "true")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["--state-dir", str(tmp_path), "--metrics-listen", ""]) == 1
    assert "KUBERNETES_SERVICE_HOST" in capsys.readouterr().err


class _TakesHost:
    def __init__(self, host: HostOptions) -> None:
        self.host = host


def test_reconciler_factory_gets_host_settings_when_it_takes_them(caplog: pytest.LogCaptureFixture) -> None:
    host = HostOptions(ike_port=1500)
    made = make_reconciler(f"{__name__}:_TakesHost", host, list)
    assert isinstance(made, _TakesHost) and made.host is host
    assert make_reconciler("", HostOptions(), list) == []
    assert "not applied" not in caplog.text
    assert make_reconciler("", host, list) == []
    assert "not applied" in caplog.text
