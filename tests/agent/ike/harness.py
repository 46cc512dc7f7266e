"""Two IKE engines in one process passing bytes, with a fake clock and a programmable lossy wire."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshsec.agent.ike.config import IkeConfig, fqdn
from meshsec.agent.ike.events import Addr
from meshsec.agent.ike.payloads import TrafficSelector
from meshsec.agent.ike.responder import IkeResponder
from meshsec.agent.ike.session import IkeSession

A_IP, B_IP, NAT_IP = "198.18.0.1", "198.18.0.2", "198.18.0.99"
PSK = b"correct horse battery staple!!"
NET_A, NET_B = "198.19.1.0/24", "198.19.2.0/24"


def make_configs(**kw: Any) -> tuple[IkeConfig, IkeConfig]:
    """Initiator (a) and responder (b) configs; keyword args apply to both, `i_`/`r_` prefixes to one."""
    common = {k: v for k, v in kw.items() if not k.startswith(("i_", "r_"))}
    ikw = {**common, **{k[2:]: v for k, v in kw.items() if k.startswith("i_")}}
    rkw = {**common, **{k[2:]: v for k, v in kw.items() if k.startswith("r_")}}
    a = IkeConfig(
        local_addr=(ikw.pop("ip", A_IP), 500),
        remote_addr=(ikw.pop("peer_ip", B_IP), 500),
        local_id=fqdn("a.test"),
        remote_id=ikw.pop("remote_id", fqdn("b.test")),
        psk=ikw.pop("psk", PSK),
        local_ts=ikw.pop("local_ts", [TrafficSelector.from_cidr(NET_A)]),
        remote_ts=ikw.pop("remote_ts", [TrafficSelector.from_cidr(NET_B)]),
        seed=1,
        **ikw,
    )
    b = IkeConfig(
        local_addr=(rkw.pop("ip", B_IP), 500),
        remote_addr=None,
        local_id=fqdn("b.test"),
        remote_id=rkw.pop("remote_id", fqdn("a.test")),
        psk=rkw.pop("psk", PSK),
        local_ts=rkw.pop("local_ts", [TrafficSelector.from_cidr(NET_B)]),
        remote_ts=rkw.pop("remote_ts", [TrafficSelector.from_cidr(NET_A)]),
        seed=2,
        **rkw,
    )
    return a, b


@dataclass
class Wire:
    """What crossed, for assertions: (direction, bytes, destination)."""

    log: list[tuple[str, bytes, Addr]] = field(default_factory=list)

    def sent(self, direction: str) -> list[bytes]:
        return [raw for d, raw, _ in self.log if d == direction]


class Pair:
    """Initiator session `a` (host A) and responder dispatcher `b` (host B), optionally behind a NAT."""

    def __init__(self, a_cfg: IkeConfig, b_cfg: IkeConfig, now: float = 1000.0, nat: bool = False) -> None:
        self.now = now
        self.a = IkeSession(a_cfg, now)
        self.b = IkeResponder(lambda addr: b_cfg, now)
        self.nat = nat
        self.nat_ports = [40000, 40001]  # NAT mapping of A's 500 and 4500 (tests may "rebind" it)
        self.a_ip, self.b_ip = a_cfg.local_addr[0], b_cfg.local_addr[0]
        self.a_source_ip = self.a_ip  # tests may spoof where A's datagrams appear to come from
        self.ev_a: list[Any] = []
        self.ev_b: list[Any] = []
        self.wire = Wire()
        self.drop: Callable[[str, bytes], bool] = lambda direction, raw: False

    def start(self) -> Pair:
        self.a.initiate(self.now)
        self.pump()
        return self

    def _a_source(self) -> Addr:
        if self.nat:
            return (NAT_IP, self.nat_ports[0] if self.a.local_port == 500 else self.nat_ports[1])
        return (self.a_source_ip, self.a.local_port)

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for raw, dst in self.a.datagrams_to_send(self.now):
                moved = True
                self.wire.log.append(("a>b", raw, dst))
                if not self.drop("a>b", raw):
                    self.b.receive(raw, self._a_source(), self.now, local_port=dst[1])
            for raw, dst, lport in self.b.datagrams_to_send(self.now):
                moved = True
                self.wire.log.append(("b>a", raw, dst))
                if self.nat:
                    assert dst[0] == NAT_IP, dst
                    if dst[1] not in self.nat_ports:
                        continue  # the NAT has no such mapping (any more): the datagram is lost
                    a_port = 500 if dst[1] == self.nat_ports[0] else 4500
                else:
                    assert dst[0] == self.a_ip
                    a_port = dst[1]
                if not self.drop("b>a", raw):
                    self.a.receive(raw, (self.b_ip, lport), self.now, local_port=a_port)
            self.collect()
            if not moved:
                return

    def collect(self) -> None:
        while (ev := self.a.next_event()) is not None:
            self.ev_a.append(ev)
        while (item := self.b.next_event()) is not None:
            self.ev_b.append(item[1])

    def advance(self, seconds: float, step: float | None = None) -> None:
        """Move the clock, firing every timer that falls due on the way (in order)."""
        end = self.now + seconds
        while True:
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None and t <= end]
            if not timers:
                break
            self.now = max(self.now, min(timers))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.collect()
            self.pump()
        self.now = end
        self.pump()

    @property
    def b_session(self) -> IkeSession:
        assert len(self.b.sessions) == 1, self.b.sessions
        return self.b.sessions[0]


def of(events: list[Any], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]
