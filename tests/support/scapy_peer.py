"""An ESP-in-UDP peer built on Scapy's independent ESP implementation, run inside a test namespace.

    ip netns exec NS python -m tests.support.scapy_peer

Binds UDP 4500 on 0.0.0.0 and [::], then serves JSON commands, one per stdin line, answering one JSON
line each on stdout.  Command "exchange": wait for our data plane's ESP datagram, decrypt it with
`scapy.layers.ipsec.SecurityAssociation` (nat_t_header=UDP, esn_en), check that the inner UDP payload
is `expect`, then answer with a UDP datagram `reply` to the sender's inner (address, port), encrypted
by Scapy and sent from port 4500 -- so one command proves both directions on the wire.  Test support
only; one process serves many cases so Scapy's import cost is paid once.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation

SCAPY_ALGOS = {
    "aes128gcm16": ("AES-GCM", None),
    "aes256gcm16": ("AES-GCM", None),
    "chacha20poly1305": ("CHACHA20-POLY1305", None),
    "aes128-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes256-sha256": ("AES-CBC", "SHA2-256-128"),
}


def scapy_sa(d: dict[str, Any], tunnel_header: Any, nat_port: int) -> SecurityAssociation:
    crypt, auth = SCAPY_ALGOS[d["transform"]]
    return SecurityAssociation(
        ESP,
        spi=d["spi"],
        crypt_algo=crypt,
        crypt_key=bytes.fromhex(d["enc_key"]),
        auth_algo=auth,
        auth_key=bytes.fromhex(d["integ_key"]) if auth else None,
        tunnel_header=tunnel_header,
        nat_t_header=UDP(sport=4500, dport=nat_port),
        esn_en=bool(d.get("esn")),
        esn=0,
    )


def exchange(socks: dict[int, socket.socket], cmd: dict[str, Any]) -> dict[str, Any]:
    fam = cmd["family"]
    ip_cls = IP if fam == 4 else IPv6
    sock = socks[fam]
    tunnel = cmd["mode"] == "tunnel"
    deadline = time.monotonic() + cmd.get("timeout", 10)
    seen = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data, addr = sock.recvfrom(65535)
        seen += 1
        if len(data) < 8 or data[:4] == b"\0\0\0\0":
            continue
        outer = ip_cls(src=addr[0], dst=cmd["local_ul"]) / UDP(sport=addr[1], dport=4500) / ESP(data)
        outer = ip_cls(bytes(outer))
        seq = int(outer[ESP].seq)  # decrypt() strips the ESP layer from `outer`
        hdr = ip_cls(src=cmd["remote_ul"], dst=cmd["local_ul"]) if tunnel else None
        sa_in = scapy_sa(cmd["sa_in"], hdr, addr[1])
        try:
            inner = sa_in.decrypt(outer)
        except Exception as exc:
            return {"ok": False, "error": f"scapy could not decrypt our packet: {exc!r}", "seen": seen}
        inner = ip_cls(bytes(inner))
        if UDP not in inner or bytes(inner[UDP].payload) != cmd["expect"].encode():
            continue  # some other packet (e.g. a retransmission of an earlier case)
        recomputed = inner.copy()
        del recomputed[UDP].chksum
        udp_ok = ip_cls(bytes(recomputed))[UDP].chksum == inner[UDP].chksum
        reply_hdr = ip_cls(src=cmd["local_ul"], dst=cmd["remote_ul"]) if tunnel else None
        sa_out = scapy_sa(cmd["sa_out"], reply_hdr, addr[1])
        reply = (
            ip_cls(src=cmd["local_in"], dst=cmd["remote_in"])
            / UDP(sport=inner[UDP].dport, dport=inner[UDP].sport)
            / cmd["reply"].encode()
        )
        if not tunnel:
            reply = ip_cls(bytes(reply))
        enc = sa_out.encrypt(reply)
        sock.sendto(bytes(enc[ESP]), addr)
        return {
            "ok": True,
            "inner_src": inner.src,
            "inner_dst": inner.dst,
            "udp_checksum_ok": udp_ok,
            "seq": seq,
            "seen": seen,
        }
    return {"ok": False, "error": "no matching ESP datagram before the timeout", "seen": seen}


def main() -> int:
    socks: dict[int, socket.socket] = {}
    for fam, af, host in ((4, socket.AF_INET, "0.0.0.0"), (6, socket.AF_INET6, "::")):
        s = socket.socket(af, socket.SOCK_DGRAM)
        if af == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, 4500))
        socks[fam] = s
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            result = exchange(socks, cmd)
        except Exception as exc:
            result = {"ok": False, "error": repr(exc)}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
