"""Data-plane counters: plain ints bumped by the I/O threads, read (racily but safely) by the agent.

Owns the names of everything the loops count.  Per-SA packet/byte counts live in the ESP core's
`Counters`; these are the I/O-level ones (drops before an SA is known, offload, ICMP, IKE traffic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class DataplaneCounters:
    tun_packets_in: int = 0  # inner packets read from the TUN (after TSO segmentation)
    tun_reads: int = 0  # read() calls that returned data
    tun_packets_out: int = 0  # inner packets written towards the host (before GRO merging)
    tun_writes: int = 0
    tun_write_errors: int = 0
    udp_datagrams_in: int = 0
    udp_recvs: int = 0
    esp_out: int = 0
    udp_sends_failed: int = 0
    no_policy: int = 0  # inner packet matched no outbound selector
    no_sa: int = 0  # selector pointed at an SA that is gone
    too_big: int = 0  # inner packet over the tunnel MTU
    icmp_too_big_sent: int = 0
    mss_clamped: int = 0
    keepalives_in: int = 0
    ike_in: int = 0
    ike_out: int = 0
    ike_handler_errors: int = 0
    invalid_datagrams: int = 0  # port-4500 datagrams that are neither ESP, IKE nor keepalive
    offload_errors: int = 0
    internal_errors: int = 0  # a bug: an unexpected exception caught per packet, loop kept running
    last_internal_error: str = ""  # exception type and message only, never packet bytes
    drops: dict[str, int] = field(default_factory=dict)  # inbound/outbound EspDrop by reason

    def snapshot(self) -> dict[str, object]:
        out = asdict(self)
        out["drops"] = dict(self.drops)
        return out

    def note_internal_error(self, exc: BaseException) -> None:
        self.internal_errors += 1
        self.last_internal_error = f"{type(exc).__name__}: {exc}"[:200]
