"""swanctl export mirrors what the agents were compiled to: same proposals, swapped selectors, same key."""

from __future__ import annotations

from pathlib import Path

from meshsec.controller.compiler import compile_mesh
from meshsec.controller.compiler.export import swanctl
from meshsec.controller.spec import load_spec

from .helpers import CREDS, psk_for

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "mesh.yaml"


def test_export_mirrors_the_agent_side() -> None:
    spec = load_spec(EXAMPLE.read_text(), "mesh.yaml")
    text = swanctl(spec, CREDS, "legacy-fw")
    agent_view = next(p for p in compile_mesh(spec, CREDS)["gw-paris"].peers if p.name == "legacy-fw")
    (child,) = agent_view.children
    assert f"proposals = {', '.join(agent_view.ike.proposals)}" in text
    assert f"local_ts = {', '.join(child.remote_ts)}" in text
    assert f"remote_ts = {', '.join(child.local_ts)}" in text
    assert f"esp_proposals = {', '.join(child.esp_proposals)}" in text
    assert 'id = "fqdn:legacy-fw.example.net"' in text and 'id = "fqdn:gw-paris.meshsec"' in text
    assert f"secret = 0x{psk_for('gw-paris', 'legacy-fw').hex()}" in text
    assert "remote_addrs = 198.18.0.2" in text and "local_addrs = 198.18.9.9" in text
    assert text.count("{") == text.count("}")


def test_certificate_auth_export_has_no_secrets() -> None:
    spec = load_spec(EXAMPLE.read_text().replace("    auth: psk                   #", "    #"), "mesh.yaml")
    text = swanctl(spec, CREDS, "legacy-fw")
    assert "auth = pubkey" in text and "cacerts = meshsec-ca.pem" in text and "secrets {" not in text
