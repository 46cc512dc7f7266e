"""Controller scale benchmark, compile part: full meshes of 1,000 and 10,000 agents.

Prints, per fleet size: mesh.yaml validation time, index build time and memory, the time to
materialize NodeConfigs (all of them for 1,000 nodes; a sample, extrapolated, for 10,000, where the
whole mesh is 10^8 PeerConfigs), the time and work of a one-node change, and peak RSS.  Ratios are
against a reference measured in the same run: building each PeerConfig through the protobuf API
(the straightforward way) instead of from cached canonical fragments, and recompiling the whole fleet
instead of the nodes a change touches.  The gRPC fan-out part (etcd write -> last agent's Sync, p50/p99
with >= 1,000 simulated agents) belongs to the control-plane server and is added there.

Times are CPU seconds of this process (the 2-core machine is shared).

Run: python bench/controller_scale.py [--sizes 1000 10000] [--sample 20]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import time
import tracemalloc

from meshsec.api.v1 import config_pb2, spec_pb2
from meshsec.controller.compiler import Credentials, MeshCompiler
from meshsec.controller.compiler.model import Model
from meshsec.controller.spec import default_identity, load_spec


def mesh_yaml(n: int) -> str:
    lines = ["apiVersion: meshsec.io/v1", "kind: Mesh", "nodes:"]
    for i in range(n):
        a, b = divmod(i, 250)
        lines.append(
            f"  - {{name: n{i:05d}, endpoints: [198.18.{a}.{b + 1}], subnets: [198.19.{a}.{b + 1}/32]}}"
        )
    lines += ["policies:", "  - {name: mesh, topology: full-mesh, members: {all: true}}"]
    return "\n".join(lines) + "\n"


def naive_peer(model: Model, a: str, b: str) -> bytes:
    """Reference: the PeerConfig built field by field with the protobuf API, then serialized and hashed."""
    node, pols = model.nodes[b], model.policies_between(a, b)
    prof = model.profiles[pols[0].policy.profile]
    peer = config_pb2.PeerConfig(
        name=b,
        kind=node.kind,
        endpoints=node.endpoints,
        remote_identity=default_identity(node),
        auth=prof.auth,
        ike=config_pb2.IkeConfig(
            proposals=prof.ike_proposals,
            lifetime=prof.ike_lifetime,
            dpd_interval_seconds=prof.dpd_interval_seconds,
            dpd_timeout_seconds=prof.dpd_timeout_seconds,
        ),
        initiation=config_pb2.INITIATION_INITIATE
        if model.initiator(a, b) == a
        else config_pb2.INITIATION_RESPOND,
        behind_nat=node.behind_nat,
    )
    for pm in pols:
        pol = pm.policy
        cp = model.profiles[pol.profile]
        peer.children.add(
            name=pol.name,
            mode=pol.mode,
            local_ts=model.traffic_selectors(a, pol.name),
            remote_ts=model.traffic_selectors(b, pol.name),
            esp_proposals=cp.esp_proposals,
            lifetime=cp.child_lifetime,
        )
    peer.digest = hashlib.sha256(peer.SerializeToString(deterministic=True)).hexdigest()
    return peer.SerializeToString(deterministic=True)


def clock() -> float:
    """CPU seconds of this process: the machine is shared, and wall time measures the neighbours too."""
    return time.process_time()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(n: int, sample: int) -> None:
    creds = Credentials(trusted_ca_pem="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    text = mesh_yaml(n)
    t = clock()
    spec = load_spec(text, "mesh.yaml")
    t_load = clock() - t

    tracemalloc.start()
    t = clock()
    compiler = MeshCompiler(creds, cache_peers=0)
    compiler.update(spec)
    t_index = clock() - t
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()

    names = compiler.names()
    chosen = names if n <= 1000 else names[:: max(1, n // sample)][:sample]
    t = clock()
    size = 0
    for name in chosen:
        size += compiler.config(name).ByteSize()
    t_some = clock() - t
    per_node = t_some / len(chosen)
    t_all = per_node * n

    model = compiler.model
    assert model is not None
    ref_peers = names[1 : 1 + min(n - 1, 2000)]
    t = clock()
    for b in ref_peers:
        naive_peer(model, names[0], b)
    t_naive = (clock() - t) / len(ref_peers)
    t = clock()
    for b in ref_peers:
        model.peer_bytes(names[0], b)
    t_frag = (clock() - t) / len(ref_peers)

    changed_spec = spec_pb2.MeshSpec()
    changed_spec.CopyFrom(spec)
    changed_spec.nodes[n // 2].subnets[0] = "198.18.255.1/32"
    t = clock()
    changed = compiler.update(changed_spec)
    t_change = clock() - t

    print(f"--- full mesh of {n} agents ({n * (n - 1):,} peer entries) ---")
    print(f"validate mesh.yaml ({len(text) / 1e6:.1f} MB):      {t_load:8.2f} s")
    print(f"index (initial compile, lazy):         {t_index:8.2f} s   held {held / 2**20:7.1f} MiB")
    what = "all" if len(chosen) == n else f"{len(chosen)} sampled"
    print(
        f"materialize NodeConfig ({what}):  {per_node * 1e3:8.1f} ms/node ({n - 1} peers, "
        f"{size / len(chosen) / 2**20:.2f} MiB serialized); whole fleet {t_all:8.1f} s"
        f"{' (extrapolated)' if len(chosen) < n else ''}"
    )
    print(
        f"PeerConfig: fragments {t_frag * 1e6:6.1f} us vs protobuf API {t_naive * 1e6:6.1f} us "
        f"-> {t_naive / t_frag:4.1f}x faster"
    )
    print(
        f"one-node subnet change: {t_change:8.2f} s, {len(changed)} configs changed, "
        f"{compiler.last_nodes_compiled} nodes and {compiler.last_peers_compiled} peer entries recompiled "
        f"(vs {n * (n - 1):,} for a full recompile: {t_all / t_change:6.1f}x less time)"
    )
    print(f"peak RSS so far: {rss_mib():8.0f} MiB")


def bench_sparse(n: int, group: int) -> None:
    """The same fleet as many small meshes: a change must cost what it touches, not the fleet."""
    lines = ["apiVersion: meshsec.io/v1", "nodes:"]
    for i in range(n):
        a, b = divmod(i, 250)
        lines.append(
            f"  - {{name: n{i:05d}, endpoints: [198.18.{a}.{b + 1}], subnets: [198.19.{a}.{b + 1}/32], "
            f"labels: {{g: g{i // group}}}}}"
        )
    lines.append("policies:")
    lines += [f"  - {{name: g{g}, members: {{labels: {{g: g{g}}}}}}}" for g in range(n // group)]
    spec = load_spec("\n".join(lines) + "\n", "mesh.yaml")
    compiler = MeshCompiler(Credentials(), cache_peers=0)
    compiler.update(spec)
    changed_spec = spec_pb2.MeshSpec()
    changed_spec.CopyFrom(spec)
    changed_spec.nodes[n // 2].subnets[0] = "198.18.255.1/32"
    t = clock()
    changed = compiler.update(changed_spec)
    t_change = clock() - t
    print(f"--- {n} agents as {n // group} full meshes of {group} ---")
    print(
        f"one-node subnet change: {t_change:8.3f} s, {len(changed)} configs changed, "
        f"{compiler.last_nodes_compiled} nodes and {compiler.last_peers_compiled} peer entries recompiled"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--sample", type=int, default=20, help="nodes materialized for fleets above 1,000")
    args = parser.parse_args()
    for n in args.sizes:
        bench(n, args.sample)
    bench_sparse(max(args.sizes), 100)


if __name__ == "__main__":
    main()
