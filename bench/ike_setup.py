"""IKE SA + first Child SA setups per second and setup latency: meshsec's IKE engine against strongSwan
charon<->charon, measured in the same run between the same two network namespaces over a veth.

    sudo python -m bench.ike_setup [--count 2000] [--seconds 10] [--window 32] [--latency-count 200]
                                   [--auth psk,ecdsa] [--rounds 1] [--json]

One setup = IKE_SA_INIT + IKE_AUTH carrying the first Child SA, a distinct IKE SA each time, all SAs
kept until the end of the round (as a gateway with many peers would).  Both sides keep `--window`
setups in flight until `--count` have completed or `--seconds` have passed, then wait (bounded) for
the stragglers; then a second, unloaded round at window 1 (`--latency-count` setups) gives the
latency of one setup without queueing.  Proposal for both: aes128gcm16-prfsha256-x25519, ESP
aes128gcm16; PSK, or ECDSA P-256 certificates from one CA (RFC 7427 signatures).

- meshsec: our initiator (IkeResponder + IkeAdapter, one asyncio process) in namespace a, our
  responder (the same classes, as the agent runs them) in namespace b.  Latency = initiate() ->
  ChildSaEstablished event, in the initiator process.
- charon: charon-systemd (kernel-libipsec) in a and in b, driven over vici as
  shared/interop/strongswan-libipsec/README.md describes: asynchronous `initiate` (timeout -1) with
  the window in flight (from four vici connections), reuse_ikesa = no, unique = never, threads = 32,
  `child-updown` events counted.
  Latency = initiate request sent -> child-updown event received, matched by IKE SA unique id
  (charon numbers IKE SAs in the order it creates them).

Both responders raise their DoS thresholds above the window (cookies and the per-source half-open
cap would otherwise throttle one busy initiator), neither installs routes, and neither logs per SA.
CPU = user+system seconds of the two IKE daemons (not the vici driver) per setup; "rx drops" = UDP
datagrams the kernel dropped during the round because a daemon's socket buffer was full.  Needs root,
charon-systemd, strongswan-swanctl and the `vici` package (see bench/README.md).  The process roles
(`--role ours-initiator|ours-responder`) are this file run inside a namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.netns import Namespace, Topology  # noqa: E402
from tests.support.strongswan import STRONGSWAN_CONF, Charon  # noqa: E402

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
NET_A, NET_B = "198.19.1.0/24", "198.19.2.0/24"
PSK = "meshsec-bench-psk-0123456789abcdef"
IKE_PROPOSAL, ESP_PROPOSAL = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
DOS_LIMIT = 100_000  # cookie threshold and per-source half-open cap on both responders
GRACE = 10.0  # seconds allowed for in-flight setups after the last initiate


@dataclass
class Result:
    impl: str
    auth: str
    window: int
    setups: int
    failed: int
    seconds: float
    rate: float  # setups/s over the middle 80 % of completions
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_ms: float  # CPU of both IKE daemons per setup
    resp_kb: float  # responder resident memory per kept IKE SA + Child SA
    rx_drops: int = 0  # UDP datagrams the kernel dropped for a full socket buffer, both namespaces
    latencies: list[float] = field(default_factory=list, repr=False)


# ---------------------------------------------------------------------------------------------------
# process-level helpers


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _rx_drops(*namespaces: Namespace) -> int:
    """UDP RcvbufErrors summed over the namespaces: datagrams lost because a daemon read too slowly."""
    total = 0
    for ns in namespaces:
        rows = [line.split() for line in ns.run("cat", "/proc/net/snmp").stdout.splitlines()]
        udp = [r for r in rows if r and r[0] == "Udp:"]
        total += int(dict(zip(udp[0][1:], udp[1][1:], strict=True)).get("RcvbufErrors", 0))
    return total


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rate(ups: list[float]) -> float:
    """Setups/s between the 10th and the 90th percentile completion: neither the ramp-up nor a
    straggler's retransmission timer (charon's is 4 s) stretches the measured interval."""
    if len(ups) < 10:
        return float("nan")
    t = sorted(ups)
    lo, hi = len(t) // 10, len(t) - 1 - len(t) // 10
    return (hi - lo) / (t[hi] - t[lo]) if t[hi] > t[lo] else float("nan")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _make_pki(tmp: Path) -> dict[str, str]:
    """CA + two ECDSA P-256 leaf certificates (a.test, b.test) as PEM files; returns their paths."""
    import datetime as dt

    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from tests.agent.ike import pki_helpers as pk

    now = dt.datetime.now(dt.UTC)
    window = {"not_before": now - dt.timedelta(days=1), "not_after": now + dt.timedelta(days=1)}
    ca_key, a_key, b_key = pk.key("ec", 40), pk.key("ec", 41), pk.key("ec", 42)
    ca = pk.issue(pk.cn("bench CA"), ca_key, ca=True, **window)
    sec1 = {"encoding": Encoding.PEM, "format": PrivateFormat.TraditionalOpenSSL}
    files = {  # SEC1 keys: charon's plugin set here (no pkcs8) reads that form; so does cryptography
        "ca.pem": pk.pem(ca),
        "a.pem": pk.pem(pk.issue(pk.cn("a"), a_key, ca, ca_key, dns=["a.test"], **window)),
        "b.pem": pk.pem(pk.issue(pk.cn("b"), b_key, ca, ca_key, dns=["b.test"], **window)),
        "a.key": a_key.private_bytes(encryption_algorithm=NoEncryption(), **sec1),
        "b.key": b_key.private_bytes(encryption_algorithm=NoEncryption(), **sec1),
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return {name: str(tmp / name) for name in files}


# ---------------------------------------------------------------------------------------------------
# meshsec roles (run inside a namespace as `python -m bench.ike_setup --role ...`)


def _ours_config(c: dict[str, Any], initiator: bool) -> Any:
    from cryptography.hazmat.primitives import serialization
    from meshsec.agent.ike.certs import TrustStore, load_pem_certificates
    from meshsec.agent.ike.config import IkeConfig, fqdn
    from meshsec.agent.ike.payloads import TrafficSelector

    me, peer = ("a", "b") if initiator else ("b", "a")
    extra: dict[str, Any] = {"psk": PSK.encode()}
    if c["auth"] == "ecdsa":
        pki = c["pki"]
        with open(pki[f"{me}.key"], "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), None)
        with open(pki[f"{me}.pem"], "rb") as fh:
            chain = load_pem_certificates(fh.read())
        with open(pki["ca.pem"], "rb") as fh:
            trust = TrustStore(tuple(load_pem_certificates(fh.read())))
        extra = {"private_key": key, "cert_chain": chain, "trust": trust}
    return IkeConfig(
        local_addr=(A_IP if initiator else B_IP, 500),
        remote_addr=(B_IP, 500) if initiator else None,
        local_id=fqdn(f"{me}.test"),
        remote_id=fqdn(f"{peer}.test"),
        ike_proposals=(IKE_PROPOSAL,),
        esp_proposals=(ESP_PROPOSAL,),
        local_ts=[TrafficSelector.from_cidr(NET_A if initiator else NET_B)],
        remote_ts=[TrafficSelector.from_cidr(NET_B if initiator else NET_A)],
        dpd_interval=None,  # charon's default too (dpd_delay = 0)
        initial_contact=False,  # like unique = never: every SA is kept, none replaces another
        **extra,
    )


async def _ours_responder(c: dict[str, Any]) -> None:
    from meshsec.agent.ike.adapter import IkeAdapter
    from meshsec.agent.ike.cookies import DosGuard
    from meshsec.agent.ike.responder import IkeResponder

    cfg = _ours_config(c, initiator=False)
    loop = asyncio.get_running_loop()
    guard = DosGuard(loop.time(), cookie_threshold=DOS_LIMIT, per_source_limit=DOS_LIMIT)
    adapter = IkeAdapter(IkeResponder(lambda addr: cfg, loop.time(), guard), B_IP, keepalive_interval=None)
    await adapter.start()
    print(json.dumps({"event": "ready"}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    adapter.close()


async def _ours_initiator(c: dict[str, Any]) -> None:
    from meshsec.agent.ike.adapter import IkeAdapter
    from meshsec.agent.ike.events import ChildSaEstablished, Event, IkeSaFailed, PeerDead
    from meshsec.agent.ike.responder import IkeResponder
    from meshsec.agent.ike.session import IkeSession

    cfg = _ours_config(c, initiator=True)
    loop = asyncio.get_running_loop()
    started: dict[int, float] = {}
    latencies: list[float] = []
    failed = 0
    wake = asyncio.Event()
    last_up = 0.0
    ups: list[float] = []  # completion times

    def on_event(session: IkeSession, ev: Event) -> None:
        nonlocal failed, last_up
        t0 = started.pop(id(session), None)
        if t0 is None:
            return
        if isinstance(ev, ChildSaEstablished):
            last_up = loop.time()
            latencies.append(last_up - t0)
            ups.append(last_up)
        elif isinstance(ev, IkeSaFailed | PeerDead):
            failed += 1
        else:
            started[id(session)] = t0  # IkeSaEstablished: the Child SA comes with the same message
            return
        wake.set()

    adapter = IkeAdapter(IkeResponder(lambda addr: None, loop.time()), A_IP, on_event=on_event)
    adapter.keepalive_interval = None
    await adapter.start()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)  # not the imports and start-up
    first = loop.time()
    stop_at = first + c["seconds"]
    issued = 0
    while issued < c["count"] and loop.time() < stop_at:
        while len(started) < c["window"] and issued < c["count"]:
            started[id(adapter.initiate(cfg))] = loop.time()
            issued += 1
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), max(0.01, stop_at - loop.time()))
        except TimeoutError:
            break
    end = loop.time() + GRACE
    while started and loop.time() < end:
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), max(0.01, end - loop.time()))
        except TimeoutError:
            break
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "event": "done",
        "setups": len(latencies),
        "failed": failed + len(started),
        "seconds": (last_up or loop.time()) - first,
        "ups": ups,
        "latencies": latencies,
        "cpu": ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime,
    }
    print(json.dumps(out), flush=True)
    adapter.close()


def _role_main(role: str, conf_path: str) -> None:
    with open(conf_path) as fh:
        c = json.load(fh)
    asyncio.run(_ours_responder(c) if role == "ours-responder" else _ours_initiator(c))


# ---------------------------------------------------------------------------------------------------
# one round of each implementation


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise RuntimeError(f"no answer from {proc.args!r} within {timeout:g}s (exit {proc.poll()})")
    return json.loads(box[0])


def run_ours(a: Namespace, b: Namespace, tmp: Path, args: argparse.Namespace, auth: str, pki: Any) -> Result:
    conf = tmp / f"ours-{auth}.json"
    conf.write_text(
        json.dumps(
            {"auth": auth, "pki": pki, "count": args.count, "seconds": args.seconds, "window": args.window}
        )
    )
    cmd = [sys.executable, "-m", "bench.ike_setup", "--role"]
    err = open(tmp / f"ours-{auth}.stderr", "wb")  # noqa: SIM115 - closed below, after both processes
    try:
        resp = b.popen([*cmd, "ours-responder", str(conf)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=err, cwd=str(ROOT))  # fmt: skip
        _readline(resp, 20)
        rss0, cpu0 = _rss_kb(resp.pid), _proc_cpu(resp.pid)
        init = a.popen([*cmd, "ours-initiator", str(conf)], stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT))
        out = _readline(init, args.seconds + GRACE + 30)
        resp_cpu, rss1 = _proc_cpu(resp.pid) - cpu0, _rss_kb(resp.pid)
        init.wait(timeout=10)
        assert resp.stdin is not None
        resp.stdin.close()
        resp.wait(timeout=10)
    finally:
        err.close()
    n = out["setups"]
    return Result(
        "meshsec", auth, args.window, n, out["failed"], out["seconds"],
        _rate(out["ups"]), _pct(out["latencies"], 0.5) * 1e3,
        _pct(out["latencies"], 0.99) * 1e3, _mean(out["latencies"]) * 1e3,
        (out["cpu"] + resp_cpu) / max(n, 1) * 1e3, (rss1 - rss0) / max(n, 1), out["latencies"],
    )  # fmt: skip


#: strongswan.conf additions for the benchmark (both instances), per the interop notes' recipe.
_CHARON_TUNING = f"""\
    threads = 32
    reuse_ikesa = no
    install_routes = no
    cookie_threshold = {DOS_LIMIT}
    block_threshold = {DOS_LIMIT}
    # many IKE SAs: a hashed IKE_SA table instead of the default single row (strongSwan's own advice)
    ikesa_table_size = 1024
    ikesa_table_segments = 16
"""


def _charon_conf(side: str, auth: str) -> str:
    me, peer = ("a", "b") if side == "a" else ("b", "a")
    local_ip, remote_ip = (A_IP, B_IP) if side == "a" else (B_IP, A_IP)
    local_ts, remote_ts = (NET_A, NET_B) if side == "a" else (NET_B, NET_A)
    if auth == "psk":
        local = remote = "auth = psk"
        secrets = f'secrets {{\n    ike-1 {{\n        id-a = a.test\n        id-b = b.test\n        secret = "{PSK}"\n    }}\n}}\n'  # noqa: E501
    else:
        local = f"auth = pubkey\n            certs = {me}.pem"
        remote, secrets = "auth = pubkey\n            cacerts = ca.pem", ""
    return f"""connections {{
    lab {{
        version = 2
        local_addrs = {local_ip}
        remote_addrs = {remote_ip}
        proposals = {IKE_PROPOSAL}
        unique = never
        rekey_time = 0
        local {{
            {local}
            id = {me}.test
        }}
        remote {{
            {remote}
            id = {peer}.test
        }}
        children {{
            net {{
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = {ESP_PROPOSAL}
                rekey_time = 0
                start_action = none
            }}
        }}
    }}
}}
{secrets}"""


def _site_addresses(a: Namespace, b: Namespace) -> None:
    """charon (kernel-libipsec) wants a local address inside its own site subnet, as in the interop tests."""
    for ns, addr in ((a, "198.19.1.1"), (b, "198.19.2.1")):
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")


def _vici(charon: Charon) -> Any:
    import vici

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(charon.vici)
    return vici.Session(sock)


def run_charon(
    a: Namespace, b: Namespace, tmp: Path, args: argparse.Namespace, auth: str, pki: Any
) -> Result:
    sconf = STRONGSWAN_CONF.replace("    load_modular = no\n", "    load_modular = no\n" + _CHARON_TUNING)
    # no routes (ours installs none either); log level 0: errors and SA up/down only
    sconf = sconf.replace("    install_routes = yes\n", "").replace("default = 1", "default = 0")
    charons = {}
    for side, ns in (("a", a), ("b", b)):
        d = tmp / f"charon-{auth}-{side}"
        if auth == "ecdsa":
            for sub, name in (("x509", f"{side}.pem"), ("x509ca", "ca.pem"), ("ecdsa", f"{side}.key")):
                (d / sub).mkdir(parents=True, exist_ok=True)
                (d / sub / name).write_bytes(Path(pki[name]).read_bytes())
        charons[side] = Charon(ns, str(d), _charon_conf(side, auth), strongswan_conf=sconf)
    try:
        for ch in charons.values():
            ch.start()
            ch.load()
        init, resp = charons["a"], charons["b"]
        assert init.proc is not None and resp.proc is not None
        pids = (init.proc.pid, resp.proc.pid)
        return _drive_charon(init, pids, args, auth)
    finally:
        for ch in charons.values():
            ch.stop()


def _drive_charon(init: Charon, pids: tuple[int, int], args: argparse.Namespace, auth: str) -> Result:
    """Asynchronous vici initiates with `window` in flight; a listener thread counts child-updown."""
    up_at: dict[int, float] = {}
    failed: list[int] = []
    lock = threading.Condition()
    stop = threading.Event()
    listener = _vici(init)

    def listen() -> None:
        with contextlib.suppress(OSError):  # charon went away first: nothing left to count
            _listen()

    def _listen() -> None:
        for label, msg in listener.listen(["child-updown", "ike-updown"], timeout=0.2):
            if stop.is_set():
                break
            if label is None:
                continue
            sa = next(iter(msg.values())) if label == b"ike-updown" else None
            with lock:
                if label == b"child-updown" and msg.get("up") == b"yes":
                    for v in msg.values():
                        if isinstance(v, dict) and "uniqueid" in v:
                            up_at[int(v["uniqueid"])] = time.monotonic()
                elif label == b"ike-updown" and msg.get("up") != b"yes" and isinstance(sa, dict):
                    failed.append(int(sa.get("uniqueid", 0)))  # an IKE SA went down before we stopped
                lock.notify_all()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.3)  # the listener is registered
    rss_pid = pids[1]
    rss0, cpu0 = _rss_kb(rss_pid), sum(_proc_cpu(p) for p in pids)
    sent: list[float] = []  # charon's unique ids start at 1 in a fresh daemon, in creation order
    first = time.monotonic()
    stop_at = first + args.seconds
    request = {"child": "net", "ike": "lab", "timeout": -1, "init-limits": "no"}

    def send(ctl: Any) -> None:
        """One of a few senders: one vici connection serialises its requests, and its round trip
        under load would otherwise cap charon's rate, not charon's IKE work."""
        with lock:
            while len(sent) < args.count and time.monotonic() < stop_at:
                if len(sent) - len(up_at) - len(failed) >= args.window:
                    lock.wait(0.5)
                    continue
                sent.append(time.monotonic())
                lock.release()
                try:
                    ctl.request("initiate", request)
                finally:
                    lock.acquire()

    senders = [threading.Thread(target=send, args=(_vici(init),)) for _ in range(min(4, args.window))]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    with lock:
        end = time.monotonic() + GRACE
        while len(up_at) + len(failed) < len(sent) and time.monotonic() < end:
            lock.wait(0.2)
        latencies = [t - sent[uid - 1] for uid, t in up_at.items() if 0 < uid <= len(sent)]
        last = max(up_at.values(), default=first)
        n = len(up_at)
    cpu = sum(_proc_cpu(p) for p in pids) - cpu0
    rss1 = _rss_kb(rss_pid)
    stop.set()
    thread.join(timeout=2)
    seconds = last - first
    return Result(
        "charon", auth, args.window, n, len(sent) - n, seconds, _rate(list(up_at.values())),
        _pct(latencies, 0.5) * 1e3, _pct(latencies, 0.99) * 1e3, _mean(latencies) * 1e3,
        cpu / max(n, 1) * 1e3, (rss1 - rss0) / max(n, 1), latencies,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# report


def _ratio(results: list[Result], auth: str, window: int, attr: str) -> float:
    def med(impl: str) -> float:
        vals = [getattr(r, attr) for r in results if (r.impl, r.auth, r.window) == (impl, auth, window)]
        return statistics.median(vals) if vals else float("nan")

    ref = med("charon")
    return med("meshsec") / ref if ref else float("nan")


def _report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"IKE SA + first Child SA setups ({IKE_PROPOSAL}, ESP {ESP_PROPOSAL}), all SAs kept; "
        f"load: window {args.window}, up to {args.count} setups or {args.seconds:g} s; "
        f"unloaded: window 1, up to {args.latency_count} setups"
    )
    print(
        f"{'impl':8} {'auth':6} {'window':>6} {'setups':>6} {'fail':>4} {'setups/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'mean ms':>8} {'cpu ms/setup':>12} {'resp KB/SA':>10} {'rx drops':>8}"
    )
    for r in results:
        print(
            f"{r.impl:8} {r.auth:6} {r.window:6d} {r.setups:6d} {r.failed:4d} {r.rate:9.1f} {r.p50_ms:8.2f} "
            f"{r.p99_ms:8.2f} {r.mean_ms:8.2f} {r.cpu_ms:12.2f} {r.resp_kb:10.1f} {r.rx_drops:8d}"
        )
    for auth in dict.fromkeys(r.auth for r in results):
        w, parts = args.window, []
        parts.append(f"setups/s x{_ratio(results, auth, w, 'rate'):.2f}")
        parts.append(f"CPU/setup x{_ratio(results, auth, w, 'cpu_ms'):.2f}")
        parts.append(f"p50 x{_ratio(results, auth, w, 'p50_ms'):.2f}")
        parts.append(f"p99 x{_ratio(results, auth, w, 'p99_ms'):.2f}")
        if args.latency_count:
            parts.append(f"unloaded p50 x{_ratio(results, auth, 1, 'p50_ms'):.2f}")
            parts.append(f"unloaded p99 x{_ratio(results, auth, 1, 'p99_ms'):.2f}")
        print(f"{auth}: meshsec / charon   " + "   ".join(parts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="setups per loaded round (bound)")
    p.add_argument("--seconds", type=float, default=10.0, help="initiating time per round (bound)")
    p.add_argument("--window", type=int, default=32, help="setups in flight in the loaded round")
    p.add_argument("--latency-count", type=int, default=200, help="setups at window 1 (0: skip)")
    p.add_argument("--auth", default="psk", help="comma-separated: psk, ecdsa")
    p.add_argument("--rounds", type=int, default=1, help="rounds per implementation, alternating")
    p.add_argument("--json", action="store_true", help="print one JSON object per round instead")
    p.add_argument("--role", nargs=2, metavar=("ROLE", "CONF"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        _role_main(*args.role)
        return 0
    auths = [x.strip() for x in args.auth.split(",") if x.strip()]
    if not auths or not set(auths) <= {"psk", "ecdsa"}:
        p.error("--auth takes psk and/or ecdsa")
    if args.count < 1 or args.window < 1 or args.seconds <= 0 or args.latency_count < 0:
        p.error("--count, --window and --seconds must be positive")
    loads = [args]
    if args.latency_count:
        loads.append(argparse.Namespace(count=args.latency_count, seconds=min(args.seconds, 5.0), window=1))
    results: list[Result] = []
    with Topology("ik") as topo, tempfile.TemporaryDirectory(prefix="meshsec-ikebench-") as tmpdir:
        a, b = topo.add("a"), topo.add("b")
        topo.link(a, b, [f"{A_IP}/24"], [f"{B_IP}/24"])
        _site_addresses(a, b)
        tmp = Path(tmpdir)
        pki = _make_pki(tmp) if "ecdsa" in auths else None
        for auth in auths:
            for _ in range(args.rounds):
                for load in loads:
                    for run in (run_ours, run_charon):
                        drops0 = _rx_drops(a, b)
                        results.append(run(a, b, tmp, load, auth, pki))
                        results[-1].rx_drops = _rx_drops(a, b) - drops0
    if args.json:
        for r in results:
            print(json.dumps({k: v for k, v in asdict(r).items() if k != "latencies"}))
    else:
        _report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
