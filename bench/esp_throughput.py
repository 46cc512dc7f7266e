"""Single-stream TCP throughput through the meshsec user-space ESP tunnel, against references
measured in the same run: strongSwan kernel-libipsec (charon<->charon, PSK, aes128gcm16) and the bare veth.

    sudo python -m bench.esp_throughput [--seconds 10] [--rounds 1] [--transform aes128gcm16] [--json]

Each scenario gets two fresh network namespaces joined by a veth (198.18.0.1 <-> 198.18.0.2); the
tunnels carry 198.19.1.0/24 <-> 198.19.2.0/24.  iperf3 runs one TCP stream from a to b.  Printed per
scenario: Gbit/s (receiver side), inner packets/s, CPU seconds per GB moved (the data-path processes:
our two tunnel processes or the two charons; "host" = all CPUs busy time, noisy on a shared machine),
and ratios against libipsec and the veth.  Needs root, iperf3, charon-systemd (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.netns import Namespace, Topology
from tests.support.static_tunnel import StaticTunnel, tunnel_pair_configs
from tests.support.strongswan import Charon, psk_tunnel_conf

A_UL, B_UL = "198.18.0.1", "198.18.0.2"
A_IN, B_IN = "198.19.1.1", "198.19.2.1"


@dataclass
class Result:
    scenario: str
    gbit_s: float
    bytes: int
    seconds: float
    packets_s: float
    cpu_s_per_gb: float  # data-path processes (user+sys)
    host_cpu_s_per_gb: float  # whole machine, all processes


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _host_busy() -> float:
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _counter(ns: Namespace, ifname: str, name: str) -> int:
    return int(ns.run("cat", f"/sys/class/net/{ifname}/statistics/{name}").stdout)


def _iperf(a: Namespace, b: Namespace, dst: str, seconds: int, pids: list[int], packets) -> Result:  # type: ignore[no-untyped-def]
    server = b.popen(["iperf3", "-s", "-1", "-B", dst], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    cpu0 = sum(_proc_cpu(p) for p in pids)
    host0 = _host_busy()
    p0 = packets()
    out = a.run("iperf3", "-c", dst, "-t", str(seconds), "-J", timeout=seconds + 30).stdout
    p1 = packets()
    cpu = sum(_proc_cpu(p) for p in pids) - cpu0
    host = _host_busy() - host0
    server.wait(timeout=10)
    end = json.loads(out)["end"]
    received = end["sum_received"]
    nbytes = int(received["bytes"])
    secs = float(received["seconds"])
    gb = nbytes / 1e9
    return Result("", received["bits_per_second"] / 1e9, nbytes, secs, (p1 - p0) / secs, cpu / gb, host / gb)


def _pair(topo: Topology) -> tuple[Namespace, Namespace, str]:
    a, b = topo.add("a"), topo.add("b")
    if_a, _ = topo.link(a, b, [f"{A_UL}/24"], [f"{B_UL}/24"])
    return a, b, if_a


def bare(seconds: int) -> Result:
    with Topology("bv") as topo:
        a, b, if_a = _pair(topo)
        r = _iperf(a, b, B_UL, seconds, [], lambda: _counter(a, if_a, "tx_packets"))
        r.scenario = "veth"
        return r


def libipsec(seconds: int, workdir: str, transform: str) -> Result:
    with Topology("bs") as topo:
        a, b, _ = _pair(topo)
        a.ip("addr", "add", f"{A_IN}/32", "dev", "lo")
        b.ip("addr", "add", f"{B_IN}/32", "dev", "lo")
        psk = "bench-psk-" + os.urandom(8).hex()
        ca = Charon(
            a,
            os.path.join(workdir, "sa"),
            psk_tunnel_conf(
                local_addr=A_UL,
                remote_addr=B_UL,
                local_id="a.lab",
                remote_id="b.lab",
                local_ts="198.19.1.0/24",
                remote_ts="198.19.2.0/24",
                psk=psk,
                esp_proposals=transform,
            ),
        )
        cb = Charon(
            b,
            os.path.join(workdir, "sb"),
            psk_tunnel_conf(
                local_addr=B_UL,
                remote_addr=A_UL,
                local_id="b.lab",
                remote_id="a.lab",
                local_ts="198.19.2.0/24",
                remote_ts="198.19.1.0/24",
                psk=psk,
                esp_proposals=transform,
            ),
        )
        with ca, cb:
            ca.load()
            cb.load()
            ca.initiate("net", "lab")
            pids = [ca.proc.pid, cb.proc.pid]  # type: ignore[union-attr]
            r = _iperf(a, b, B_IN, seconds, pids, lambda: _counter(a, "ipsec0", "tx_packets"))
        r.scenario = "strongswan-libipsec"
        return r


def meshsec(seconds: int, workdir: str, transform: str) -> Result:
    with Topology("bm") as topo:
        a, b, _ = _pair(topo)
        cfg_a, cfg_b, _addr = tunnel_pair_configs(4, "tunnel", transform, tag=topo.prefix[-6:])
        ta = StaticTunnel(a, cfg_a, workdir).start()
        tb = StaticTunnel(b, cfg_b, workdir).start()
        try:
            r = _iperf(
                a, b, B_IN, seconds, [ta.proc.pid, tb.proc.pid], lambda: int(ta.counters()["tun_packets_in"])
            )
        finally:
            ta.stop()
            tb.stop()
        r.scenario = "meshsec"
        return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 duration per scenario")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all scenarios, interleaved")
    parser.add_argument("--transform", default="aes128gcm16", help="ESP transform (strongSwan name)")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args(argv)
    results: dict[str, list[Result]] = {"veth": [], "strongswan-libipsec": [], "meshsec": []}
    with tempfile.TemporaryDirectory(prefix="meshsec-bench-") as workdir:
        for _ in range(args.rounds):
            results["veth"].append(bare(args.seconds))
            results["strongswan-libipsec"].append(libipsec(args.seconds, workdir, args.transform))
            results["meshsec"].append(meshsec(args.seconds, workdir, args.transform))
    best = {k: max(v, key=lambda r: r.gbit_s) for k, v in results.items()}
    ref, veth = best["strongswan-libipsec"].gbit_s, best["veth"].gbit_s
    print(f"single TCP stream, {args.transform}, {args.seconds}s x {args.rounds} round(s), best round shown")
    head = f"{'scenario':<22}{'Gbit/s':>8}{'x libipsec':>12}{'x veth':>9}{'kpps':>8}"
    print(head + f"{'cpu s/GB':>10}{'host s/GB':>11}")
    for name, r in best.items():
        print(
            f"{name:<22}{r.gbit_s:>8.2f}{r.gbit_s / ref:>12.2f}{r.gbit_s / veth:>9.3f}"
            f"{r.packets_s / 1000:>8.0f}{r.cpu_s_per_gb:>10.2f}{r.host_cpu_s_per_gb:>11.2f}"
        )
    floor = best["meshsec"].gbit_s / ref
    per_round = [
        m.gbit_s / s.gbit_s for m, s in zip(results["meshsec"], results["strongswan-libipsec"], strict=True)
    ]
    cpu_ratio = best["strongswan-libipsec"].cpu_s_per_gb / best["meshsec"].cpu_s_per_gb
    print(f"meshsec / libipsec = {floor:.2f} (floor 1.5): {'PASS' if floor >= 1.5 else 'BELOW FLOOR'}")
    print(
        f"per-round throughput ratios: {', '.join(f'{r:.2f}' for r in per_round)}; "
        f"median {statistics.median(per_round):.2f}; libipsec needs {cpu_ratio:.1f}x our CPU per GB"
    )
    load1, _, _ = os.getloadavg()
    if load1 > (os.cpu_count() or 1):
        print(
            f"warning: load average {load1:.1f} on {os.cpu_count()} CPUs during the run: other work "
            "competed for the CPU, throughput figures are unreliable"
        )
    if args.json:
        print(json.dumps({k: [asdict(r) for r in v] for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
