"""Run one meshsec IKE endpoint (IkeAdapter + IkeResponder) inside a test namespace.

Usage: python -m tests.system.ike_runner CONFIG.json. Prints one JSON line per engine event on stdout
(keys never included) and runs until killed. Test helper, not product code.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization
from meshsec.agent.ike.adapter import IkeAdapter
from meshsec.agent.ike.certs import TrustStore, load_pem_certificates
from meshsec.agent.ike.config import IkeConfig, fqdn
from meshsec.agent.ike.events import ChildSaEstablished, ChildSaRekeyed, Event
from meshsec.agent.ike.payloads import TrafficSelector
from meshsec.agent.ike.responder import IkeResponder
from meshsec.agent.ike.session import IkeSession


def _config(c: dict[str, Any]) -> IkeConfig:
    extra: dict[str, Any] = {}
    if "cert" in c:  # {"key": PEM path, "cert": PEM path, "ca": PEM path}
        with open(c["cert"]["key"], "rb") as fh:
            extra["private_key"] = serialization.load_pem_private_key(fh.read(), None)
        with open(c["cert"]["cert"], "rb") as fh:
            extra["cert_chain"] = load_pem_certificates(fh.read())
        with open(c["cert"]["ca"], "rb") as fh:
            extra["trust"] = TrustStore(tuple(load_pem_certificates(fh.read())))
    return IkeConfig(
        local_addr=(c["local_ip"], 500),
        remote_addr=(c["remote_ip"], 500) if c.get("initiate") else None,
        local_id=fqdn(c["local_id"]),
        remote_id=fqdn(c["remote_id"]),
        psk=c["psk"].encode() if "psk" in c else None,
        ike_proposals=c.get("ike_proposals", ["aes128gcm16-prfsha256-x25519"]),
        esp_proposals=c.get("esp_proposals", ["aes128gcm16"]),
        local_ts=[TrafficSelector.from_cidr(x) for x in c["local_ts"]],
        remote_ts=[TrafficSelector.from_cidr(x) for x in c["remote_ts"]],
        mode=c.get("mode", "tunnel"),
        dpd_interval=c.get("dpd_interval", 30.0),
        **extra,
    )


def _line(session: IkeSession, ev: Event) -> None:
    out: dict[str, Any] = {"event": type(ev).__name__}
    if isinstance(ev, ChildSaEstablished):
        out.update(
            spi_in=f"{ev.spi_in:08x}",
            spi_out=f"{ev.spi_out:08x}",
            encap=ev.encap,
            mode=ev.mode,
            peer=list(ev.peer),
            local_port=ev.local_port,
        )
    elif isinstance(ev, ChildSaRekeyed):
        out.update(old_spi_in=ev.old_spi_in, spi_in=f"{ev.new.spi_in:08x}", spi_out=f"{ev.new.spi_out:08x}")
    else:
        out.update(
            {
                k: (v.hex() if isinstance(v, bytes) else v)
                for k, v in vars(ev).items()
                if isinstance(v, str | int | float | bytes)
            }
        )
    print(json.dumps(out), flush=True)


async def main(path: str) -> None:
    with open(path) as fh:
        c = json.load(fh)
    cfg = _config(c)
    loop = asyncio.get_running_loop()
    responder = IkeResponder(lambda addr: cfg, loop.time())
    scheduled = False

    def on_event(session: IkeSession, ev: Event) -> None:
        nonlocal scheduled
        _line(session, ev)
        if isinstance(ev, ChildSaEstablished) and not scheduled:  # run the scripted actions once
            scheduled = True
            for name, delay in c.get("actions", []):
                loop.call_later(delay, _act, session, name)

    def _act(session: IkeSession, name: str) -> None:
        getattr(session, name)(adapter.now)  # rekey_child / rekey_ike / delete
        adapter.kick(session)

    adapter = IkeAdapter(responder, c["local_ip"], on_event=on_event)
    await adapter.start()
    print(json.dumps({"event": "ready"}), flush=True)
    if c.get("initiate"):
        adapter.initiate(cfg)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
