"""The demo mesh as data: node names, namespaces, addresses, the mesh.yaml and what must come up.

Pure (no I/O), so tests can check the plan without root.  The expected SAs are not restated here: they
are what the real compiler makes of the demo's mesh.yaml, so the demo and the controller cannot
disagree about what "every SA up" means.  Addresses come only from the ranges reserved for tests and
documentation (underlay 198.18.0.0/24, site LANs 198.19.0.0/16) so nothing the demo builds can collide
with a real network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.compiler import Credentials, compile_mesh
from meshsec.controller.spec import load_spec

MIN_NODES = 2  # two site gateways
MAX_NODES = 12  # every agent is a Python process on one machine
UNDERLAY = ipaddress.ip_network("198.18.0.0/24")
SITE_NETS = (ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24"))
HOSTS_POLICY = "hosts"  # full mesh of every host, transport mode, between the underlay addresses
SITES_POLICY = "sites"  # tunnel mode between the two site LANs, through their gateways


@dataclass(frozen=True)
class Host:
    """One meshsec node: a namespace with an underlay address (and a LAN if it is a site gateway)."""

    name: str
    underlay: str  # address on the shared underlay segment
    site: str = ""  # the site it is the gateway of ("" = none)
    lan_address: str = ""  # its address on the site LAN, CIDR


@dataclass(frozen=True)
class Lan:
    """A site LAN: one namespace with one machine in it, reachable only through its gateway host."""

    name: str
    site: str
    gateway: str  # host name
    subnet: str
    address: str  # the LAN machine's address, CIDR
    via: str  # the gateway's LAN address (next hop)


@dataclass(frozen=True)
class DemoPlan:
    hosts: list[Host]
    lans: list[Lan]
    prefixlen: int = UNDERLAY.prefixlen
    sites: dict[str, str] = field(default_factory=dict)  # site name -> subnet

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def mesh_yaml(self) -> str:
        """The spec the demo applies: every host meshed in transport mode, the site LANs tunnelled.

        The two gateways are in both policies, so their one IKE SA carries two child SAs: `hosts`
        (transport, gateway to gateway) and `sites` (tunnel, LAN to LAN).
        """
        lines = [
            "# meshsec demo: hosts talk to each other in transport mode (host to host, ESP between the",
            "# underlay addresses); the two site LANs talk in tunnel mode through their gateways.",
            "apiVersion: meshsec.io/v1",
            "kind: Mesh",
            "sites:",
        ]
        for name, subnet in self.sites.items():
            lines += [f"  - name: {name}", f"    subnets: [{subnet}]"]
        lines.append("nodes:")
        for h in self.hosts:
            lines += [f"  - name: {h.name}", f'    endpoints: ["{h.underlay}"]']
            if h.site:
                lines += [f"    site: {h.site}", "    labels: {role: gateway}"]
        lines += [
            "policies:",
            f"  - name: {HOSTS_POLICY}",
            "    topology: full-mesh",
            "    members: {all: true}",
            "    mode: transport",
            f"  - name: {SITES_POLICY}",
            "    topology: full-mesh",
            "    members: {labels: {role: gateway}}",
            "    mode: tunnel",
        ]
        return "\n".join(lines) + "\n"

    def modes(self) -> dict[str, str]:
        """Child SA name -> the mode it must be installed in."""
        return {HOSTS_POLICY: "transport", SITES_POLICY: "tunnel"}

    def spec(self) -> spec_pb2.MeshSpec:
        return load_spec(self.mesh_yaml(), "demo-mesh.yaml")

    def expected(self) -> dict[str, dict[str, set[str]]]:
        """node -> peer -> child SA names, as the controller's compiler derives them from mesh_yaml()."""
        configs: dict[str, config_pb2.NodeConfig] = compile_mesh(self.spec(), Credentials())
        return {
            node: {p.name: {c.name for c in p.children} for p in cfg.peers} for node, cfg in configs.items()
        }

    def ping_pairs(self) -> list[tuple[str, str, str, str]]:
        """(from namespace role, to role, destination address, child SA that must carry it)."""
        pairs = [
            (a.name, b.name, b.underlay, HOSTS_POLICY) for a in self.hosts for b in self.hosts if a is not b
        ]
        for a in self.lans:
            for b in self.lans:
                if a is not b:
                    pairs.append((a.name, b.name, b.address.split("/")[0], SITES_POLICY))
        return pairs


def make_plan(nodes: int) -> DemoPlan:
    """Hosts host-1..host-N on 198.18.0.0/24; host-1 and host-2 are the gateways of site-a and site-b."""
    if not MIN_NODES <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes must be between {MIN_NODES} and {MAX_NODES}, not {nodes}")
    hosts, lans, sites = [], [], {}
    for i in range(1, nodes + 1):
        underlay = str(UNDERLAY.network_address + i)
        if i <= len(SITE_NETS):
            letter = "ab"[i - 1]
            net = SITE_NETS[i - 1]
            site = f"site-{letter}"
            gw = f"{net.network_address + 1}/{net.prefixlen}"
            sites[site] = str(net)
            hosts.append(Host(f"host-{i}", underlay, site, gw))
            lans.append(
                Lan(
                    name=f"lan-{letter}",
                    site=site,
                    gateway=f"host-{i}",
                    subnet=str(net),
                    address=f"{net.network_address + 10}/{net.prefixlen}",
                    via=str(net.network_address + 1),
                )
            )
        else:
            hosts.append(Host(f"host-{i}", underlay))
    return DemoPlan(hosts=hosts, lans=lans, sites=sites)
