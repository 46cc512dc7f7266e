"""A transport-mode child (host to host) and a tunnel-mode child (subnet to subnet) on ONE IKE SA.

Proves, across real namespaces:
- two of our agents: one IKE SA carries both children, each in its own mode and with its own ESP
  proposal; pings host to host go through the transport child and pings subnet to subnet through the
  tunnel child (the counters of the right child move, at both ends); Child SA rekeys from either side
  keep each child's mode and transform under a ping stream on both children with nothing lost;
- against strongSwan's charon (kernel-libipsec): one IKE SA with both children. The tunnel child
  carries traffic both ways. For the transport child charon selects its transport child config for
  our USE_TRANSPORT_MODE request, and our responder answers charon's transport request with
  USE_TRANSPORT_MODE, which charon accepts -- then charon cannot install it: libipsec, the only ESP
  charon has on this kernel (no XFRM ESP), does tunnel mode only ("IPsec SA: unsupported mode"), so
  transport traffic with charon cannot be shown here. The tunnel child is unaffected throughout, and
  charon's tunnel request for the hosts' selectors is refused with NO_PROPOSAL_CHOSEN (policy mode).
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from meshsec.api.v1 import config_pb2, spec_pb2

from tests.agent.runtime.harness import PSK, AgentProc, node, peer, wait
from tests.support.netns import Namespace, Topology
from tests.support.strongswan import Charon

pytestmark = pytest.mark.system

A_UL, B_UL = "198.18.0.1", "198.18.0.2"
A_NET, B_NET = "198.19.1.0/24", "198.19.2.0/24"
A_IN, B_IN = "198.19.1.1", "198.19.2.1"
_CHILD_UP = re.compile(r"IKE (\w+): Child SA \w+/\w+ (transport|tunnel) (?:established|rekeyed)")


@pytest.fixture
def lab() -> Iterator[tuple[Topology, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="meshsec-mixed-", ignore_cleanup_errors=True) as d,
        Topology("mx") as topo,
    ):
        yield topo, d


def _hosts(topo: Topology) -> tuple[Namespace, Namespace]:
    a, b = topo.add("a"), topo.add("b")
    topo.link(a, b, [f"{A_UL}/24"], [f"{B_UL}/24"])
    for ns, addr in ((a, A_IN), (b, B_IN)):  # each host's address in its site subnet
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
    return a, b


def _mixed_peer(
    name: str,
    endpoint: str,
    me: str,
    other: str,
    lan: str,
    far: str,
    *,
    transport_first: bool,
    initiate: bool,
) -> config_pb2.PeerConfig:
    """hosts: transport, host to host, chacha20poly1305; sites: tunnel, subnet to subnet, aes128gcm16."""
    p = peer(name, endpoint=endpoint, local_ts=[f"{me}/32"], remote_ts=[f"{other}/32"], initiate=initiate)
    del p.children[:]
    hosts = config_pb2.ChildSaConfig(
        name="hosts",
        mode=spec_pb2.MODE_TRANSPORT,
        local_ts=[f"{me}/32"],
        remote_ts=[f"{other}/32"],
        esp_proposals=["chacha20poly1305"],
    )
    sites = config_pb2.ChildSaConfig(
        name="sites",
        mode=spec_pb2.MODE_TUNNEL,
        local_ts=[lan],
        remote_ts=[far],
        esp_proposals=["aes128gcm16"],
    )
    p.children.extend([hosts, sites] if transport_first else [sites, hosts])
    return p


def _ping(ns: Namespace, dst: str, *agents: AgentProc, count: int = 3) -> None:
    r = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", dst, check=False)
    assert r.returncode == 0, "\n".join(
        [r.stdout + r.stderr, *(f"{g.status()}\n{g.log_tail()}" for g in agents)]
    )


def _by_name(agent: AgentProc, peer_name: str) -> dict[str, dict]:
    return {c["name"]: c for c in agent.children(peer_name) if c.get("state") == "CHILD_SA_STATE_INSTALLED"}


def _packets(agent: AgentProc, peer_name: str) -> dict[str, tuple[int, int]]:
    """child name -> (packets in, packets out) of its installed SA."""
    out = {}
    for name, c in _by_name(agent, peer_name).items():
        cnt = c.get("counters", {})
        out[name] = (int(cnt.get("packetsIn", 0)), int(cnt.get("packetsOut", 0)))
    return out


def _ike_sas_in_log(agent: AgentProc) -> set[str]:
    """The IKE SAs that children were established or rekeyed on, from the agent's log."""
    with open(agent.log_path, errors="replace") as fh:
        return {m.group(1) for m in _CHILD_UP.finditer(fh.read())}


@pytest.mark.parametrize(
    "transport_first", [True, False], ids=["transport-in-ike-auth", "tunnel-in-ike-auth"]
)
def test_two_agents_one_ike_sa_transport_and_tunnel_children_carry_traffic(
    lab: tuple[Topology, str], transport_first: bool
) -> None:
    topo, workdir = lab
    a, b = _hosts(topo)
    pa = _mixed_peer("b", B_UL, A_UL, B_UL, A_NET, B_NET, transport_first=transport_first, initiate=True)
    pb = _mixed_peer("a", A_UL, B_UL, A_UL, B_NET, A_NET, transport_first=transport_first, initiate=False)
    ag_b = AgentProc(b, workdir, "b", node("b", [pb])).start()
    ag_a = AgentProc(a, workdir, "a", node("a", [pa])).start()
    for agent, other in ((ag_a, "b"), (ag_b, "a")):
        agent.wait_up(other, children=2)
        kids = _by_name(agent, other)
        assert {n: c["mode"] for n, c in kids.items()} == {"hosts": "MODE_TRANSPORT", "sites": "MODE_TUNNEL"}
        assert (
            kids["hosts"]["transform"] == "chacha20poly1305" and kids["sites"]["transform"] == "aes128gcm16"
        )
        assert "lastError" not in agent.peer_status(other), agent.peer_status(other)
    assert len(_ike_sas_in_log(ag_a)) == 1 and len(_ike_sas_in_log(ag_b)) == 1  # both on one IKE SA

    before_a, before_b = _packets(ag_a, "b"), _packets(ag_b, "a")
    _ping(a, B_UL, ag_a, ag_b)  # host to host: the transport child
    time.sleep(0.6)  # status files are rewritten every 0.25 s
    mid_a, mid_b = _packets(ag_a, "b"), _packets(ag_b, "a")
    assert mid_a["hosts"][1] - before_a["hosts"][1] >= 3 and mid_b["hosts"][0] - before_b["hosts"][0] >= 3
    assert mid_a["sites"] == before_a["sites"], "host-to-host ping went through the tunnel child"
    _ping(b, A_IN, ag_a, ag_b)  # subnet to subnet: the tunnel child
    _ping(a, B_IN, ag_a, ag_b)
    time.sleep(0.6)
    end_a, end_b = _packets(ag_a, "b"), _packets(ag_b, "a")
    assert end_a["sites"][0] - mid_a["sites"][0] >= 6 and end_b["sites"][1] - mid_b["sites"][1] >= 3
    assert end_a["hosts"] == mid_a["hosts"], "subnet-to-subnet pings went through the transport child"


def test_rekeys_from_both_sides_keep_modes_and_lose_nothing(lab: tuple[Topology, str]) -> None:
    topo, workdir = lab
    a, b = _hosts(topo)
    pa = _mixed_peer("b", B_UL, A_UL, B_UL, A_NET, B_NET, transport_first=True, initiate=True)
    pb = _mixed_peer("a", A_UL, B_UL, A_UL, B_NET, A_NET, transport_first=True, initiate=False)
    ag_b = AgentProc(b, workdir, "b", node("b", [pb])).start()
    ag_a = AgentProc(a, workdir, "a", node("a", [pa])).start()
    ag_a.wait_up("b", children=2)
    ag_b.wait_up("a", children=2)
    spis0 = {n: c["spiIn"] for n, c in _by_name(ag_a, "b").items()}
    pings = [
        a.popen(["ping", "-c", "300", "-i", "0.01", "-W", "1", dst], stdout=subprocess.PIPE, text=True)
        for dst in (B_UL, B_IN)
    ]
    for agent in (ag_a, ag_b):  # SIGUSR1: rekey every Child SA (both children) from this side
        time.sleep(1.0)
        agent.signal(signal.SIGUSR1)
    outs = [p.communicate(timeout=30)[0] for p in pings]
    for out in outs:
        assert " 0% packet loss" in out, out[-400:] + ag_a.log_tail() + ag_b.log_tail()
    for agent, other in ((ag_a, "b"), (ag_b, "a")):
        wait(
            lambda agent=agent, other=other: len(_by_name(agent, other)) == 2, 5.0, "both children installed"
        )
        kids = _by_name(agent, other)
        assert {n: c["mode"] for n, c in kids.items()} == {"hosts": "MODE_TRANSPORT", "sites": "MODE_TUNNEL"}
        assert (
            kids["hosts"]["transform"] == "chacha20poly1305" and kids["sites"]["transform"] == "aes128gcm16"
        )
        assert int(agent.peer_status(other).get("rekeys", 0)) >= 4  # 2 children x 2 sides
    assert all(_by_name(ag_a, "b")[n]["spiIn"] != spis0[n] for n in spis0)
    assert len(_ike_sas_in_log(ag_a)) == 1  # every rekeyed child stayed on the one IKE SA


def _charon_conf() -> str:
    """charon (sw = host b): a transport child for the two hosts, a tunnel child for the two LANs, and a
    tunnel child for the hosts' own addresses that our policy must refuse (hosts are transport)."""
    return f"""connections {{
    lab {{
        version = 2
        local_addrs = {B_UL}
        remote_addrs = {A_UL}
        proposals = aes128gcm16-prfsha256-x25519
        rekey_time = 0
        local {{
            auth = psk
            id = sw.meshsec
        }}
        remote {{
            auth = psk
            id = us.meshsec
        }}
        children {{
            hosts {{
                local_ts = {B_UL}/32
                remote_ts = {A_UL}/32
                mode = transport
                esp_proposals = chacha20poly1305
                rekey_time = 0
                start_action = none
            }}
            sites {{
                local_ts = {B_NET}
                remote_ts = {A_NET}
                esp_proposals = aes128gcm16
                rekey_time = 0
                start_action = none
            }}
            hosts-as-tunnel {{
                local_ts = {B_UL}/32
                remote_ts = {A_UL}/32
                mode = tunnel
                esp_proposals = chacha20poly1305
                rekey_time = 0
                start_action = none
            }}
        }}
    }}
}}
secrets {{
    ike-lab {{
        id-1 = us.meshsec
        id-2 = sw.meshsec
        secret = "{PSK.decode()}"
    }}
}}
"""


def test_charon_one_ike_sa_tunnel_child_traffic_and_transport_child_negotiation(
    lab: tuple[Topology, str],
) -> None:
    topo, workdir = lab
    us, sw = _hosts(topo)
    charon = Charon(
        sw, f"{workdir}/charon", _charon_conf(), log_levels={"ike": 2, "chd": 2, "esp": 1}
    ).start()
    charon.load()
    p = _mixed_peer("sw", B_UL, A_UL, B_UL, A_NET, B_NET, transport_first=False, initiate=True)
    p.kind = spec_pb2.NODE_KIND_EXTERNAL
    p.remote_identity = "fqdn:sw.meshsec"
    cfg = node("us", [p])
    agent = AgentProc(us, workdir, "us", cfg).start()

    def log() -> str:
        return charon.log_tail(200_000)

    try:
        agent.wait_up("sw", children=1)
        wait(
            lambda: "sites" in charon.list_sas() and "INSTALLED" in charon.list_sas(), 10.0, "charon's sites"
        )
        # our CREATE_CHILD_SA for the transport child reached charon's transport config
        wait(lambda: "IPsec SA: unsupported mode" in log(), 15.0, "charon's answer to the transport child")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- charon.log ---\n{log()[-4000:]}\n{agent.log_tail()}") from None
    text = log()
    assert re.search(r"parsed CREATE_CHILD_SA request \d+ \[ N\(USE_TRANSP\) SA No TSi TSr \]", text), text
    assert re.search(r"CHILD_SA hosts\{\d+\} state change: CREATED => INSTALLING", text), text
    _ping(us, B_IN, agent)  # the tunnel child works on the same IKE SA, both ways
    _ping(sw, A_IN, agent)
    assert "NO_PROPOSAL_CHOSEN" in agent.peer_status("sw").get("lastError", "")

    # charon asks us for the transport child: our responder picks the hosts policy and says transport
    charon.swanctl(
        "--initiate", "--child", "hosts", "--ike", "lab", "--timeout", "10", check=False, timeout=15
    )
    wait(lambda: "received USE_TRANSPORT_MODE notify" in log(), 10.0, "charon receiving our transport answer")
    text = log()
    assert re.search(r"parsed CREATE_CHILD_SA response \d+ \[ N\(USE_TRANSP\) SA No TSi TSr \]", text), text
    wait(lambda: "transport established" in agent.log_tail(20_000), 5.0, "our transport child from charon")

    # charon asks for a tunnel child over the hosts' addresses: our hosts policy is transport mode
    charon.swanctl(
        "--initiate", "--child", "hosts-as-tunnel", "--ike", "lab", "--timeout", "10", check=False, timeout=15
    )
    wait(lambda: "received NO_PROPOSAL_CHOSEN notify" in log(), 10.0, "charon receiving our refusal")
    assert "peer asked for tunnel mode" in agent.log_tail(20_000)

    # all of it on one IKE SA: charon holds exactly one, and the tunnel child still carries traffic
    sas = charon.list_sas()
    assert len(re.findall(r"^lab: #\d+, ESTABLISHED", sas, re.M)) == 1, sas
    assert len(_ike_sas_in_log(agent)) == 1, agent.log_tail()
    _ping(us, B_IN, agent)
    assert _by_name(agent, "sw")["sites"]["mode"] == "MODE_TUNNEL"
