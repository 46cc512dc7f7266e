"""An IKE_SA_INIT flood against our agent's IKE responder, in real namespaces: cookies switch on, the
half-open count stays bounded per source, and a real strongSwan charon still gets its IKE SA and Child SA.

Hosts: `r` runs our responder (IkeResponder with the agent's default DosGuard, behind IkeAdapter on
UDP 500/4500, bound to 198.18.0.1 on its loopback); `f` floods from 12 addresses x 16 source ports;
`c` runs charon, the legitimate peer.  The flooder answers COOKIE notifies from one socket per address
(a flooder that can receive at its own address, as it could here) and never sends IKE_AUTH, so its SAs
stay half-open; the other sockets never answer (a spoofer's view).  The flood is bounded: FLOOD_PPS
for at most FLOOD_SECONDS (a few thousand datagrams); it stops once charon is up and at least
MIN_FLOOD_SECONDS and MIN_PACKETS have passed (the test checks it was still running when charon was up).
The responder's half-open ledger is sampled after every datagram, so the bounds hold at every instant.

The helper processes are this module run with `--role responder|flooder` inside a namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Namespace, Topology, wait_for
from tests.support.strongswan import Charon, psk_tunnel_conf

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
R_IP = "198.18.0.1"  # the responder's IKE address (loopback of r, routed from f and c)
R_F, F_IP = "198.18.1.1", "198.18.1.2"
R_C, C_IP = "198.18.2.1", "198.18.2.2"
FLOOD_IPS = [F_IP, *(f"198.18.1.{i}" for i in range(10, 21))]  # 12 source addresses
PORTS_PER_IP = 16
FLOOD_PPS = 800
FLOOD_SECONDS = 8.0
MIN_FLOOD_SECONDS = 3.0  # even when charon is up sooner, so that echoing sources reach their cap
MIN_PACKETS = 1500  # and the flooder goes on (within FLOOD_SECONDS) until it has sent this many
PSK = "meshsec-flood-test-psk-0123456789"
NET_R, NET_C = "198.19.4.0/24", "198.19.3.0/24"
COOKIE = 16390  # Notify.COOKIE


# ---------------------------------------------------------------------------------------------------
# helper processes


def _responder_config() -> Any:
    from meshsec.agent.ike.config import IkeConfig, fqdn
    from meshsec.agent.ike.payloads import TrafficSelector

    return IkeConfig(
        local_addr=(R_IP, 500),
        remote_addr=None,
        local_id=fqdn("r.test"),
        remote_id=fqdn("c.test"),
        psk=PSK.encode(),
        local_ts=[TrafficSelector.from_cidr(NET_R)],
        remote_ts=[TrafficSelector.from_cidr(NET_C)],
    )


async def _responder() -> None:
    """Our responder as the agent builds it (default DosGuard); prints events and stats as JSON lines."""
    from meshsec.agent.ike.adapter import IkeAdapter
    from meshsec.agent.ike.events import ChildSaEstablished, IkeSaEstablished
    from meshsec.agent.ike.responder import IkeResponder

    cfg = _responder_config()
    loop = asyncio.get_running_loop()
    responder = IkeResponder(lambda addr: cfg, loop.time())
    guard = responder.guard
    peak: dict[str, int] = {}
    peak_total = 0
    first_cookie_half_open: int | None = None  # the half-open count when the first COOKIE went out
    receive = responder.receive

    def tracked(datagram: bytes, addr: tuple[str, int], now: float, local_port: int = 500) -> None:
        """Sample the half-open ledger after every datagram: the bound must hold at every instant."""
        nonlocal peak_total, first_cookie_half_open
        receive(datagram, addr, now, local_port)
        if first_cookie_half_open is None and responder.stats["cookies_sent"]:
            first_cookie_half_open = guard.half_open
        peak[addr[0]] = max(peak.get(addr[0], 0), guard.half_open_from(addr[0]))
        peak_total = max(peak_total, guard.half_open)

    responder.receive = tracked  # type: ignore[method-assign]

    def emit(**kw: Any) -> None:
        print(json.dumps(kw), flush=True)

    def on_event(session: Any, ev: Any) -> None:
        if isinstance(ev, IkeSaEstablished | ChildSaEstablished):
            emit(event=type(ev).__name__, peer=ev.peer[0], t=time.monotonic())

    adapter = IkeAdapter(responder, R_IP, on_event=on_event)
    await adapter.start()
    emit(
        event="ready",
        cookie_threshold=guard.cookie_threshold,
        per_source_limit=guard.per_source_limit,
        half_open_timeout=guard.half_open_timeout,
    )
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    while True:
        counters = responder.counters()
        emit(
            event="stats",
            t=time.monotonic(),
            half_open=guard.half_open,
            peak_total=peak_total,
            peak_per_source=peak,
            first_cookie_half_open=first_cookie_half_open,
            cookies_sent=counters["cookies_sent"],
            dropped_dos_guard=counters["dropped_dos_guard"],
            responder_sessions=counters["responder_sessions"],
            internal_error=counters["internal_error"],
        )
        if stdin_closed.done():
            break
        await asyncio.sleep(0.1)
    adapter.close()


def _flooder(max_seconds: float, pps: int) -> None:
    """Send IKE_SA_INIT requests (fresh SPIi each) round-robin from every socket at `pps` until stdin
    has closed and MIN_PACKETS went out, or `max_seconds` pass; classify every answer; print a summary."""
    from meshsec.agent.ike.config import IkeConfig, fqdn
    from meshsec.agent.ike.constants import Exchange, Flag
    from meshsec.agent.ike.message import Message, encode_plain, parse_message
    from meshsec.agent.ike.payloads import KE, SA, Nonce, Notify, ParseError, notifies
    from meshsec.agent.ike.session import IkeSession

    # one genuine IKE_SA_INIT from our own engine as the template (SA, KE, Ni, NAT detection)
    cfg = IkeConfig(local_addr=(F_IP, 500), remote_addr=(R_IP, 500), local_id=fqdn("f.test"), psk=b"x" * 16)
    s = IkeSession(cfg, 0.0)
    s.initiate(0.0)
    template = parse_message(s.datagrams_to_send(0.0)[0][0]).payloads

    def request(spi: bytes, cookie: bytes | None = None) -> bytes:
        pl = [Notify(COOKIE, data=cookie), *template] if cookie else template
        return encode_plain(Message(spi, bytes(8), Exchange.IKE_SA_INIT, Flag.INITIATOR, 0, list(pl)))

    plain = request(bytes(8))  # SPIi is the first 8 octets: a fresh one per request is a splice

    sel = selectors.DefaultSelector()
    socks: list[tuple[socket.socket, str, bool]] = []
    for i in range(PORTS_PER_IP):  # round-robin over addresses first: all of them share the flood
        for ip in FLOOD_IPS:
            sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sk.bind((ip, 0))
            sk.setblocking(False)
            echo = i == 0  # one socket per address answers cookies
            socks.append((sk, ip, echo))
            sel.register(sk, selectors.EVENT_READ, (ip, echo))
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    sent = sent_with_cookie = 0
    answers: list[dict[str, Any]] = []  # one per response: kind, source address, whether we echoed
    first_cookie_at: float | None = None
    start = time.monotonic()
    last_send = start
    batch = max(1, pps // 50)
    k = 0
    while (elapsed := time.monotonic() - start) < max_seconds and not (stop.is_set() and sent >= MIN_PACKETS):
        due = min(int(elapsed * pps) + batch - k, 4 * batch)  # catch up after a stall, in bounded bursts
        for _ in range(max(0, due)):
            sk, ip, _echo = socks[k % len(socks)]
            k += 1
            try:
                sk.sendto(os.urandom(8) + plain[8:], (R_IP, 500))
                sent += 1
            except BlockingIOError:
                pass
        last_send = time.monotonic()
        deadline = last_send + 1 / 50
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                ip, echo = key.data
                try:
                    data = key.fileobj.recv(65535)  # type: ignore[union-attr]
                    msg = parse_message(data)
                except (BlockingIOError, ParseError):
                    continue
                ns = notifies(msg.payloads)
                if COOKIE in ns:
                    # RFC 7296 §2.6: the answer is the COOKIE notify alone, SPIr zero (no state kept)
                    kind = "cookie" if len(msg.payloads) == 1 and not any(msg.spi_r) else "other:bad-cookie"
                    first_cookie_at = first_cookie_at or time.monotonic()
                    if echo:  # answer it: same SPIi, same Ni, COOKIE first (RFC 7296 §2.6)
                        key.fileobj.sendto(request(msg.spi_i, ns[COOKIE].data), (R_IP, 500))  # type: ignore[union-attr]
                        sent_with_cookie += 1
                elif any(isinstance(p, SA) for p in msg.payloads) and any(
                    isinstance(p, KE | Nonce) for p in msg.payloads
                ):
                    kind = "accepted"
                else:
                    kind = "other:" + ",".join(str(t) for t in ns)
                answers.append({"kind": kind, "ip": ip, "echo": echo, "t": time.monotonic()})
    summary = {
        "event": "done",
        "sent": sent,
        "sent_with_cookie": sent_with_cookie,
        "source_ports": len({sk.getsockname() for sk, _, _ in socks}),
        "start": start,
        "last_send": last_send,
        "first_cookie_at": first_cookie_at,
        "answers": answers,
    }
    print(json.dumps(summary), flush=True)


def _main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=("responder", "flooder"), required=True)
    p.add_argument("--seconds", type=float, default=FLOOD_SECONDS)
    p.add_argument("--pps", type=int, default=FLOOD_PPS)
    args = p.parse_args()
    if args.role == "responder":
        asyncio.run(_responder())
    else:
        _flooder(args.seconds, args.pps)


# ---------------------------------------------------------------------------------------------------
# the test


class _Lines:
    """JSON lines from a helper process, collected by a reader thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.items: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.items.append(json.loads(line))

    def finish(self, timeout: float) -> None:
        """Close the helper's stdin (its signal to stop), wait for it to exit and for its last line."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout)
        self.reader.join(timeout)

    def last(self, event: str) -> dict[str, Any] | None:
        return next((x for x in reversed(self.items) if x["event"] == event), None)

    def wait(self, event: str, timeout: float, pred: Any = lambda x: True) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((x for x in reversed(self.items) if x["event"] == event and pred(x)), None)

        return wait_for(found, timeout, what=f"{event} from {self.proc.args!r}")  # type: ignore[no-any-return]


def _helper(ns: Namespace, role: str, err: Any) -> _Lines:
    cmd = [sys.executable, "-m", "tests.system.test_ike_flood", "--role", role]
    return _Lines(ns.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT)))


def test_flood_switches_on_cookies_and_charon_still_connects(topology: Topology) -> None:
    r, f, c = topology.add("r"), topology.add("f"), topology.add("c")
    topology.link(r, f, [f"{R_F}/24"], [f"{ip}/24" for ip in FLOOD_IPS])
    topology.link(r, c, [f"{R_C}/24"], [f"{C_IP}/24"])
    r.ip("addr", "add", f"{R_IP}/32", "dev", "lo")
    f.ip("route", "add", f"{R_IP}/32", "via", R_F)
    c.ip("route", "add", f"{R_IP}/32", "via", R_C)
    c.ip("addr", "add", "198.19.3.1/32", "dev", "lo")  # charon's local address inside its site

    with tempfile.TemporaryDirectory(prefix="meshsec-flood-") as tmp, open(Path(tmp, "err"), "wb") as err:
        resp = _helper(r, "responder", err)
        ready = resp.wait("ready", 20)
        threshold, per_source = ready["cookie_threshold"], ready["per_source_limit"]
        # the flood must be able to cross the cookie threshold despite the per-source cap
        assert len(FLOOD_IPS) * per_source > threshold
        assert ready["half_open_timeout"] > 20  # no flood SA expires while the test runs
        conf = psk_tunnel_conf(
            local_addr=C_IP, remote_addr=R_IP, local_id="c.test", remote_id="r.test",
            local_ts=NET_C, remote_ts=NET_R, psk=PSK,
        )  # fmt: skip
        with Charon(c, os.path.join(tmp, "charon"), conf) as charon:
            charon.load()
            flood = _helper(f, "flooder", err)
            flood_min_end = time.monotonic() + MIN_FLOOD_SECONDS
            try:
                resp.wait("stats", 10, lambda s: s["cookies_sent"] > 0)  # cookies are on
                charon.initiate("net", "lab", timeout=15)  # blocks until the Child SA is up
                up_at = time.monotonic()
                time.sleep(max(0.0, flood_min_end - time.monotonic()))
            finally:
                flood.finish(FLOOD_SECONDS + 10)
            done = flood.wait("done", 1)
            sas = charon.list_sas()
            charon_log = charon.log_tail(400_000)
        resp.finish(10)
        final = resp.wait("stats", 1)  # the last one, printed after the flood ended
        ours = resp.items
        err.flush()
        stderr = Path(tmp, "err").read_text(errors="replace")[-2000:]

    def diag() -> str:
        kinds: dict[str, int] = {}
        for a in done["answers"]:
            kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
        return f"final {final}\nflood sent {done['sent']}, answers {kinds}\nhelpers' stderr: {stderr}"

    # the legitimate peer: charon's IKE SA and Child SA are up, on both sides, while the flood ran
    assert "ESTABLISHED" in sas and "INSTALLED" in sas, sas
    assert {"IkeSaEstablished", "ChildSaEstablished"} <= {
        x["event"] for x in ours if x.get("peer") == C_IP
    }, diag()
    assert done["last_send"] >= up_at - 0.1, "the flood had stopped before charon was up"
    # ... and it went through the cookie exchange: its second IKE_SA_INIT carries our COOKIE first
    assert "IKE_SA_INIT request 0 [ N(COOKIE)" in charon_log, charon_log[-3000:]

    answers = done["answers"]
    assert done["sent"] >= MIN_PACKETS, diag()  # a real flood, from 12 addresses x 16 ports each
    assert done["source_ports"] == len(FLOOD_IPS) * PORTS_PER_IP, diag()
    assert final["internal_error"] == 0, diag()
    # cookies switch on once the half-open count reaches the threshold: exactly `threshold` cookie-less
    # requests got a real answer, every cookie-less answer after the first COOKIE is a COOKIE
    plain = [a for a in answers if not (a["echo"] and a["kind"] == "accepted")]
    accepted_plain = [a for a in plain if a["kind"] == "accepted"]
    cookies = [a for a in answers if a["kind"] == "cookie"]
    assert len(cookies) >= 100, diag()
    assert final["first_cookie_half_open"] == threshold, diag()  # cookies start exactly at the threshold
    assert len(accepted_plain) <= threshold, diag()
    first_cookie = min(a["t"] for a in cookies)
    assert not [a for a in accepted_plain if a["t"] > first_cookie + 0.05], diag()
    assert not [a for a in answers if a["kind"].startswith("other")], diag()
    # per source: half-open SAs never exceed the cap, whether the flooder echoes cookies or not
    per_ip: dict[str, int] = {}
    for a in answers:
        if a["kind"] == "accepted":
            per_ip[a["ip"]] = per_ip.get(a["ip"], 0) + 1
    assert per_ip and max(per_ip.values()) <= per_source, per_ip
    assert max(final["peak_per_source"].values()) <= per_source, diag()
    assert final["peak_total"] <= len(FLOOD_IPS) * per_source + 1, diag()
    # echoing cookies gets a flooder's address further, but only up to the cap: the cap stops it
    echoed_in = [a for a in answers if a["echo"] and a["kind"] == "accepted" and a["t"] > first_cookie]
    assert done["sent_with_cookie"] > 0 and echoed_in, diag()
    assert all(final["peak_per_source"][ip] == per_source for ip in FLOOD_IPS), diag()
    assert final["dropped_dos_guard"] > 0, diag()


if __name__ == "__main__":
    _main()
