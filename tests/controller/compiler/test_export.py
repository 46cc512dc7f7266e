"""swanctl export mirrors what the agents were compiled to: same proposals, swapped selectors, same key.

The text is parsed with a small reader of strongSwan's settings syntax (sections `name { }`, `key =
value`, `#` comments), so the tests check the structure swanctl reads, not substrings.  That charon
really loads it and builds a tunnel is tests/system/test_export_charon.py.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any

import pytest
from meshsec.controller.compiler import Credentials, compile_mesh
from meshsec.controller.compiler.export import PLACEHOLDER, ExportError, export_swanctl, swanctl
from meshsec.controller.spec import load_spec

from .helpers import CREDS, psk_for

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "mesh.yaml"
CA1 = "-----BEGIN CERTIFICATE-----\nMQ==\n-----END CERTIFICATE-----\n"
CA2 = "-----BEGIN CERTIFICATE-----\nMg==\n-----END CERTIFICATE-----\n"
#: strongSwan time values take ONE unit (vici's parse_time): "66m" is fine, "1h6m" is refused.
TIME = re.compile(r"\d+[smhd]")


def _uncomment(line: str) -> str:
    """The line without its `#` comment; a `#` inside a quoted value is data, as in strongSwan's lexer."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i]
    return line


def parse(text: str) -> dict[str, Any]:
    """strongSwan settings text -> nested dicts; raises on anything swanctl would not read."""
    root: dict[str, Any] = {}
    stack = [root]
    for n, raw in enumerate(text.splitlines(), 1):
        line = _uncomment(raw).strip()
        if not line:
            continue
        if line.endswith("{"):
            name = line[:-1].strip()
            assert re.fullmatch(r"[\w.-]+", name) and name not in stack[-1], f"line {n}: {raw!r}"
            stack[-1][name] = {}
            stack.append(stack[-1][name])
        elif line == "}":
            stack.pop()
            assert stack, f"line {n}: unbalanced '}}'"
        else:
            key, eq, value = line.partition("=")
            assert eq and re.fullmatch(r"[\w.-]+", key.strip()), f"line {n}: {raw!r}"
            value = value.strip()
            if value.startswith('"'):
                assert value.endswith('"') and len(value) > 1, f"line {n}: {raw!r}"
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            stack[-1][key.strip()] = value
    assert len(stack) == 1, "unclosed section"
    return root


def example(edit: str = "", to: str = "") -> Any:
    text = EXAMPLE.read_text()
    if edit:
        assert edit in text
        text = text.replace(edit, to)
    return load_spec(text, "mesh.yaml")


def test_export_mirrors_the_agent_side() -> None:
    spec = example()
    out = export_swanctl(spec, CREDS, "legacy-fw", secrets=True)
    conf = parse(out.config)
    agent_view = next(p for p in compile_mesh(spec, CREDS)["gw-paris"].peers if p.name == "legacy-fw")
    (child,) = agent_view.children
    (name,) = conf["connections"]
    assert name == "meshsec-gw-paris"
    c = conf["connections"][name]
    assert c["version"] == "2" and c["local_addrs"] == "198.18.9.9" and c["remote_addrs"] == "198.18.0.2"
    assert c["proposals"] == ", ".join(agent_view.ike.proposals) == "aes256-sha256-modp2048"
    assert c["local"] == {"auth": "psk", "id": "fqdn:legacy-fw.example.net"}
    assert c["remote"] == {"auth": "psk", "id": "fqdn:gw-paris.meshsec"}
    ch = c["children"]["partner"]
    assert ch["mode"] == "tunnel"
    assert ch["local_ts"] == ", ".join(child.remote_ts) == "198.19.200.0/24"
    assert ch["remote_ts"] == ", ".join(child.local_ts) == "198.19.0.2/32, 198.19.32.0/20"
    assert ch["esp_proposals"] == ", ".join(child.esp_proposals) == "aes256-sha256"
    # the gear only responds: the agent initiates and, after DPD clears a dead SA, initiates again
    assert ch["start_action"] == "none" and ch["dpd_action"] == "clear"
    assert c["mobike"] == "no" and "unique" not in c  # INITIAL_CONTACT replaces a restarted agent's SA
    secret = conf["secrets"]["ike-gw-paris"]
    assert (
        secret["id-local"] == "fqdn:legacy-fw.example.net" and secret["id-remote"] == "fqdn:gw-paris.meshsec"
    )
    assert hmac.compare_digest(secret["secret"], "0x" + psk_for("gw-paris", "legacy-fw").hex())
    assert hmac.compare_digest(bytes.fromhex(secret["secret"][2:]), agent_view.psk)  # the agent's key
    assert out.has_secrets and not out.has_placeholders and out.files == {}
    assert swanctl(spec, CREDS, "legacy-fw") == out.config


def test_lifetimes_and_dpd_in_strongswan_units() -> None:
    """The profile's numbers, named as swanctl names them, each a single-unit time value."""
    spec = example()  # 'legacy' leaves lifetimes at the defaults: IKE 4h/4h24m/24m, ESP 1h/1h6m/6m
    c = parse(swanctl(spec, CREDS, "legacy-fw"))["connections"]["meshsec-gw-paris"]
    assert (c["rekey_time"], c["over_time"], c["rand_time"], c["dpd_delay"]) == ("4h", "24m", "24m", "30s")
    ch = c["children"]["partner"]
    assert (ch["rekey_time"], ch["life_time"], ch["rand_time"]) == ("1h", "66m", "6m")
    text = (
        EXAMPLE.read_text()
        .replace(
            "profiles:\n",
            "profiles:\n"
            "  - name: odd\n"
            "    ike: {proposals: [aes256-sha256-modp2048], rekey: 3601, life: 3961}\n"
            "    esp: {proposals: [aes256-sha256], rekey: 90s, life: 100s, jitter: 5s,"
            " rekeyBytes: 1GiB, lifeBytes: 2GiB}\n"
            "    dpd: {interval: 0}\n",
        )
        .replace(
            "    pairs: [{a: gw-paris, b: legacy-fw}]\n    profile: legacy\n",
            "    pairs: [{a: gw-paris, b: legacy-fw}, [gw-berlin, legacy-fw]]\n    profile: odd\n",
        )
    )
    fast = load_spec(text, "mesh.yaml")
    conf = parse(swanctl(fast, CREDS, "legacy-fw"))["connections"]
    c = conf["meshsec-gw-paris"]
    assert (c["rekey_time"], c["over_time"]) == ("3601s", "6m") and "dpd_delay" not in c
    ch = c["children"]["partner"]
    assert (ch["rekey_time"], ch["life_time"], ch["rand_time"]) == ("90s", "100s", "5s")
    assert (ch["rekey_bytes"], ch["life_bytes"]) == (str(1 << 30), str(1 << 31))
    assert "meshsec-gw-berlin" in conf  # a second agent: one connection each
    for conn in conf.values():
        for key in ("rekey_time", "over_time", "rand_time", "dpd_delay"):
            assert key not in conn or TIME.fullmatch(conn[key]), (key, conn[key])
        for child in conn["children"].values():
            for key in ("rekey_time", "life_time", "rand_time"):
                assert key not in child or TIME.fullmatch(child[key]), (key, child[key])


def test_placeholders_unless_secrets_are_asked_for() -> None:
    spec = example()
    out = export_swanctl(spec, CREDS, "legacy-fw", secrets=False)
    conf = parse(out.config)
    assert conf["secrets"]["ike-gw-paris"]["secret"] == PLACEHOLDER
    assert psk_for("gw-paris", "legacy-fw").hex() not in out.config
    assert out.has_placeholders and not out.has_secrets
    assert "meshctl export legacy-fw --show-secrets" in out.config  # the header says how
    assert "0x" not in repr(export_swanctl(spec, CREDS, "legacy-fw", secrets=True))  # never in a repr


def test_transport_mode_behind_nat_agent_and_other_identities() -> None:
    spec = load_spec(
        EXAMPLE.read_text()
        .replace('identity: "fqdn:legacy-fw.example.net"', 'identity: "keyid:#0a1b2c"')
        .replace(
            "    pairs: [{a: gw-paris, b: legacy-fw}]\n    profile: legacy\n",
            "    pairs: [{a: gw-paris, b: legacy-fw}, {a: laptop-7, b: legacy-fw}]\n    profile: legacy\n",
        )
        .replace(
            '    endpoints: ["198.18.0.2"]\n',
            '    endpoints: ["198.18.0.2:4500"]\n    identity: "dn:CN=gw-paris,O=meshsec"\n',
        ),
        "mesh.yaml",
    )
    conns = parse(swanctl(spec, CREDS, "legacy-fw"))["connections"]
    paris, laptop = conns["meshsec-gw-paris"], conns["meshsec-laptop-7"]
    assert paris["local"]["id"] == "keyid:#0a1b2c"  # binary key id in strongSwan's spelling
    assert paris["remote"]["id"] == "CN=gw-paris,O=meshsec"  # a DN has no prefix in strongSwan
    assert paris["remote_addrs"] == "198.18.0.2" and paris["remote_port"] == "4500"
    assert laptop["remote_addrs"] == "%any"  # behind NAT: it shows up from its NAT's address
    assert "remote_port" not in laptop


def test_transport_mode_child() -> None:
    spec = example(
        "    pairs: [{a: gw-paris, b: legacy-fw}]\n",
        "    pairs: [{a: gw-paris, b: legacy-fw}]\n    mode: transport\n",
    )
    ch = parse(swanctl(spec, CREDS, "legacy-fw"))["connections"]["meshsec-gw-paris"]["children"]["partner"]
    assert ch["mode"] == "transport"
    assert (ch["local_ts"], ch["remote_ts"]) == ("198.18.9.9/32", "198.18.0.2/32")


def test_certificate_auth_export_names_its_files() -> None:
    spec = example("    auth: psk                   #", "    #")
    creds = Credentials(trusted_ca_pem=CA1)
    out = export_swanctl(spec, creds, "legacy-fw", secrets=True)
    c = parse(out.config)["connections"]["meshsec-gw-paris"]
    assert c["local"] == {"auth": "pubkey", "id": "fqdn:legacy-fw.example.net", "certs": "legacy-fw.pem"}
    assert c["remote"] == {"auth": "pubkey", "id": "fqdn:gw-paris.meshsec", "cacerts": "meshsec-ca.pem"}
    assert "secrets {" not in out.config and not out.has_secrets and not out.has_placeholders
    assert out.files == {"x509ca/meshsec-ca.pem": CA1}
    assert "x509/legacy-fw.pem" in out.config and "externalCaPem" in out.config  # says what goes where
    assert "NOTE: no externalCaPem is set" in out.config
    # During a CA rollover agents may present a certificate from either CA: the gear trusts both.
    out = export_swanctl(spec, Credentials(trusted_ca_pem=CA1 + CA2), "legacy-fw", secrets=False)
    assert out.files == {"x509ca/meshsec-ca.pem": CA1, "x509ca/meshsec-ca-2.pem": CA2}
    remote = parse(out.config)["connections"]["meshsec-gw-paris"]["remote"]
    assert remote["cacerts"] == "meshsec-ca.pem, meshsec-ca-2.pem"


def test_export_errors_name_the_problem() -> None:
    spec = example()
    with pytest.raises(ExportError, match="'nope' not found"):
        swanctl(spec, CREDS, "nope")
    with pytest.raises(ExportError, match="'gw-paris' is an agent"):
        swanctl(spec, CREDS, "gw-paris")
    spec = example("    pairs: [{a: gw-paris, b: legacy-fw}]\n", "    pairs: [{a: gw-paris, b: db-1}]\n")
    with pytest.raises(ExportError, match="connected to no agent"):
        swanctl(spec, CREDS, "legacy-fw")


def test_same_input_same_bytes() -> None:
    assert swanctl(example(), CREDS, "legacy-fw") == swanctl(example(), CREDS, "legacy-fw")
