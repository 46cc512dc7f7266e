"""Pure translations between the desired state, the IKE engine and the ESP core.

Owns: PeerConfig -> ike.IkeConfig (proposals, PSK or certificate credentials, identities, one
ChildPolicy per child with its own mode, proposals and traffic selectors, lifetimes, DPD), traffic
selector conversions (CIDR text <-> IKE address ranges <-> ESP prefix selectors), which configured
child a negotiated Child SA belongs to, and ChildSaEstablished -> the two esp.SaParams.  No I/O:
credentials are passed in already loaded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meshsec.agent.esp import Lifetime, Mode, SaParams, TrafficSelector, TransportAddresses
from meshsec.agent.ike import certs
from meshsec.agent.ike.config import ChildPolicy, IkeConfig
from meshsec.agent.ike.events import Addr, ChildSaEstablished
from meshsec.agent.ike.identity import Identity, IdentityPattern
from meshsec.agent.ike.payloads import TrafficSelector as IkeTs
from meshsec.api.v1 import config_pb2, spec_pb2

DEFAULT_IKE_LIFE = 4 * 3600.0
DEFAULT_CHILD_LIFE = 3600.0
DEFAULT_IKE_PROPOSALS = ("aes128gcm16-prfsha256-x25519",)
DEFAULT_ESP_PROPOSALS = ("aes128gcm16",)


class ConfigError(ValueError):
    """A PeerConfig the agent cannot turn into IKE settings; the message names the field."""


@dataclass(frozen=True)
class Credentials:
    """Our certificate credentials (from the agent state dir); None fields mean "not enrolled"."""

    private_key: Any = None
    cert_chain: tuple[Any, ...] = ()


def ike_ts(cidrs: Iterable[str]) -> list[IkeTs]:
    return [IkeTs.from_cidr(c.strip()) for c in cidrs]


def ts_text(ts: IkeTs) -> list[str]:
    """An IKE address range as the CIDRs that cover it exactly."""
    lo, hi = ipaddress.ip_address(ts.start_addr), ipaddress.ip_address(ts.end_addr)
    return [str(n) for n in ipaddress.summarize_address_range(lo, hi)]  # type: ignore[arg-type]


def esp_selectors(local: Sequence[IkeTs], remote: Sequence[IkeTs]) -> tuple[TrafficSelector, ...]:
    """ESP SPD selectors (prefix pairs with protocol and ports) covering the negotiated TS pairs."""
    out: list[TrafficSelector] = []
    for lt in local:
        for rt in remote:
            if lt.ts_type != rt.ts_type:
                continue
            if lt.ip_proto and rt.ip_proto and lt.ip_proto != rt.ip_proto:
                continue
            proto = lt.ip_proto or rt.ip_proto
            for ln in ts_text(lt):
                for rn in ts_text(rt):
                    out.append(
                        TrafficSelector(
                            ipaddress.ip_network(ln),
                            ipaddress.ip_network(rn),
                            proto,
                            local_ports=(lt.start_port, lt.end_port),
                            remote_ports=(rt.start_port, rt.end_port),
                        )
                    )
    return tuple(out)


def _times(lt: spec_pb2.Lifetime, default: float) -> tuple[float, float, float]:
    """(life, rekey, jitter) in seconds from a Lifetime, strongSwan style defaults: life = rekey +
    10 %, rekey = 90 % of life, jitter 5 % of life; jitter at most half the rekey time."""
    rekey, life = float(lt.rekey_seconds), float(lt.life_seconds)
    if not life:
        life = rekey * 1.1 if rekey else default
    if not rekey or rekey >= life:
        rekey = life * 0.9
    jitter = float(lt.jitter_seconds) if lt.jitter_seconds else 0.05 * life
    return life, rekey, min(jitter, rekey * 0.5)


def _lifetime(lt: spec_pb2.Lifetime, default: float) -> tuple[float, float, float]:
    """(life, rekey fraction, jitter fraction): the IKE SA's timers, which IkeConfig keeps as ratios."""
    life, rekey, jitter = _times(lt, default)
    return life, rekey / life, jitter / life


def _retransmits(dpd_timeout: int) -> tuple[float, float, int]:
    """(first timeout, backoff base, tries) so that giving up takes about `dpd_timeout` seconds."""
    if not dpd_timeout:
        return 2.0, 1.8, 5
    first, base = 1.0, 1.5
    tries, total = 1, first
    while tries < 10 and total + first * base**tries <= dpd_timeout:
        total += first * base**tries
        tries += 1
    return first, base, tries


def identity_id(text: str) -> tuple[int, bytes]:
    ident = Identity.parse(text)
    return (int(ident.id_type), ident.data)


def ike_config(
    peer: config_pb2.PeerConfig,
    local: config_pb2.LocalConfig,
    *,
    local_addr: Addr,
    remote_addr: Addr | None,
    credentials: Credentials | None = None,
    responder: bool = False,
) -> IkeConfig:
    """The IKE settings for `peer`: one ChildPolicy per configured child (its own mode, ESP proposals
    and selectors), so one IKE SA carries transport and tunnel children side by side.  An initiator
    proposes the first child in IKE_AUTH and the rest with CREATE_CHILD_SA; a responder matches each
    request against every child.  `responder` is kept for callers; both ends get the same policies."""
    if not peer.children:
        raise ConfigError(f"peer {peer.name}: no children configured")
    policies = child_policies(peer)
    first = policies[0]
    ike_life, ike_fraction, ike_jitter = _lifetime(peer.ike.lifetime, DEFAULT_IKE_LIFE)
    child_life, _, _ = _times(peer.children[0].lifetime, DEFAULT_CHILD_LIFE)
    first_rt, base, tries = _retransmits(peer.ike.dpd_timeout_seconds)
    kwargs: dict[str, Any] = {}
    if peer.auth == spec_pb2.AUTH_METHOD_PSK:
        if len(peer.psk) < 16:
            raise ConfigError(f"peer {peer.name}: auth is PSK but psk has {len(peer.psk)} octets (< 16)")
        kwargs["psk"] = bytes(peer.psk)
    else:
        if credentials is None or credentials.private_key is None:
            raise ConfigError(f"peer {peer.name}: certificate auth, but this agent has no key/certificate")
        if not local.trusted_ca_pem:
            raise ConfigError(f"peer {peer.name}: certificate auth, but local.trusted_ca_pem is empty")
        kwargs["private_key"] = credentials.private_key
        kwargs["cert_chain"] = list(credentials.cert_chain)
        try:
            kwargs["trust"] = certs.TrustStore.from_pem(local.trusted_ca_pem.encode())
        except certs.CertificateError as exc:
            raise ConfigError(f"local.trusted_ca_pem: {exc}") from None
        kwargs["revoked"] = certs.RevocationSet.of(fingerprints=list(local.revoked_fingerprints))
    try:
        local_id = identity_id(local.identity) if local.identity else _cert_id(credentials)
        remote_id = IdentityPattern.parse(peer.remote_identity) if peer.remote_identity else None
    except ValueError as exc:
        raise ConfigError(f"peer {peer.name}: identity: {exc}") from None
    try:
        return IkeConfig(
            local_addr=local_addr,
            remote_addr=remote_addr,
            local_id=local_id,
            remote_id=remote_id,
            ike_proposals=tuple(peer.ike.proposals) or DEFAULT_IKE_PROPOSALS,
            esp_proposals=tuple(first.esp_proposals),
            local_ts=list(first.local_ts),
            remote_ts=list(first.remote_ts),
            mode=first.mode,
            children=policies,
            ike_lifetime=ike_life,
            child_lifetime=child_life,
            rekey_fraction=ike_fraction,
            rekey_jitter=ike_jitter,
            dpd_interval=float(peer.ike.dpd_interval_seconds) or None,
            retransmit_timeout=first_rt,
            retransmit_base=base,
            retransmit_tries=tries,
            **kwargs,
        )
    except ValueError as exc:
        raise ConfigError(f"peer {peer.name}: {exc}") from None


def child_mode(child: config_pb2.ChildSaConfig) -> str:
    return "transport" if child.mode == spec_pb2.MODE_TRANSPORT else "tunnel"


def child_policies(peer: config_pb2.PeerConfig) -> list[ChildPolicy]:
    """The engine's Child SA policies, one per configured child, in the controller's order, each with
    its own ESP life, rekey time and jitter (not the IKE SA's ratio)."""
    out = []
    for c in peer.children:
        try:
            local_ts, remote_ts = ike_ts(c.local_ts), ike_ts(c.remote_ts)
        except ValueError as exc:
            raise ConfigError(f"peer {peer.name}: child {c.name}: bad traffic selector: {exc}") from None
        if not local_ts or not remote_ts:
            raise ConfigError(f"peer {peer.name}: child {c.name}: local_ts and remote_ts must not be empty")
        life, rekey, jitter = _times(c.lifetime, DEFAULT_CHILD_LIFE)
        try:
            out.append(
                ChildPolicy(
                    name=c.name,
                    mode=child_mode(c),
                    esp_proposals=tuple(c.esp_proposals) or DEFAULT_ESP_PROPOSALS,
                    local_ts=local_ts,
                    remote_ts=remote_ts,
                    lifetime=life,
                    rekey_time=rekey,
                    rekey_jitter=jitter,
                )
            )
        except ValueError as exc:
            raise ConfigError(f"peer {peer.name}: {exc}") from None
    return out


def _cert_id(credentials: Credentials | None) -> tuple[int, bytes]:
    if credentials is None or not credentials.cert_chain:
        raise ConfigError("local.identity is empty and there is no certificate to take it from")
    ident = Identity.from_certificate_subject(credentials.cert_chain[0])
    return (int(ident.id_type), ident.data)


def endpoints(peer: config_pb2.PeerConfig, default_port: int = 500) -> list[Addr]:
    """PeerConfig.endpoints ("198.18.0.2", "198.18.0.2:500", "[fd00::2]:4500") as (host, port)."""
    out: list[Addr] = []
    for ep in peer.endpoints:
        ep = ep.strip()
        if ep.startswith("["):
            host, _, rest = ep[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        elif ep.count(":") == 1:
            host, _, p = ep.partition(":")
            port = int(p)
        else:
            host, port = ep, default_port
        ipaddress.ip_address(host)
        out.append((host, port))
    return out


def child_for(
    peer: config_pb2.PeerConfig,
    ts_local: Sequence[IkeTs],
    ts_remote: Sequence[IkeTs],
    mode: str | None = None,
) -> str:
    """The name of the configured child whose selectors contain the negotiated ones ("" if none);
    with `mode`, only children of that mode (their selectors may overlap across modes)."""
    for c in peer.children:
        if mode is not None and child_mode(c) != mode:
            continue
        try:
            lc, rc = ike_ts(c.local_ts), ike_ts(c.remote_ts)
        except ValueError:
            continue
        if all(any(t.is_subset_of(x) for x in lc) for t in ts_local) and all(
            any(t.is_subset_of(x) for x in rc) for t in ts_remote
        ):
            return c.name
    return ""


def esp_lifetime(child: config_pb2.ChildSaConfig | None) -> Lifetime:
    """Byte and packet limits of a child (time limits are the IKE engine's: it rekeys on time)."""
    if child is None:
        return Lifetime()
    lt = child.lifetime
    return Lifetime(
        soft_bytes=lt.rekey_bytes,
        hard_bytes=lt.life_bytes,
        soft_packets=lt.rekey_packets,
        hard_packets=lt.life_packets,
    )


def sa_params(
    ev: ChildSaEstablished, *, local_ip: str | None = None, lifetime: Lifetime | None = None
) -> tuple[SaParams, SaParams]:
    """(inbound, outbound) ESP parameters of a negotiated Child SA.

    Transport mode rebuilds IP headers from the addresses: the first local/remote selector hosts
    (transport selectors are single hosts), or `local_ip`/the peer's address when they are ranges.
    """
    mode = Mode(ev.mode)
    bits = ev.key_bits or 256
    transport = None
    if mode is Mode.TRANSPORT:
        local = _host(ev.ts_local) or local_ip
        remote = _host(ev.ts_remote) or ev.peer[0]
        if local is None:
            raise ConfigError("transport mode SA without a local host address")
        transport = TransportAddresses(ipaddress.ip_address(local), ipaddress.ip_address(remote))
    sels = esp_selectors(ev.ts_local, ev.ts_remote)
    common = {
        "encr_id": ev.encr_id,
        "key_bits": bits,
        "integ_id": ev.integ_id,
        "mode": mode,
        "esn": ev.esn,
        "transport": transport,
        "lifetime": lifetime or Lifetime(),
    }
    inbound = SaParams(
        spi=ev.spi_in,
        enc_key=ev.encr_key_in,
        integ_key=ev.integ_key_in,
        selectors=sels if mode is Mode.TUNNEL else (),
        **common,  # type: ignore[arg-type]
    )
    outbound = SaParams(spi=ev.spi_out, enc_key=ev.encr_key_out, integ_key=ev.integ_key_out, **common)  # type: ignore[arg-type]
    return inbound, outbound


def _host(ts: Sequence[IkeTs]) -> str | None:
    if ts and ts[0].start_addr == ts[0].end_addr:
        return str(ipaddress.ip_address(ts[0].start_addr))
    return None


def transform_name(ev: ChildSaEstablished) -> str:
    """strongSwan spelling of the negotiated ESP transform ("aes128gcm16", "aes256-sha256-esn")."""
    from meshsec.agent.esp.transforms import transform_spec

    name = transform_spec(ev.encr_id, ev.key_bits or 256, ev.integ_id).name
    return name + ("-esn" if ev.esn else "")
