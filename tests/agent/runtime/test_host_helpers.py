"""The runtime's pure helpers: route source selection and the NodeConfig file loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from meshsec.agent.runtime.__main__ import load_config
from meshsec.agent.runtime.routes import route_src

from tests.agent.runtime.harness import node, peer


def _cfg():  # type: ignore[no-untyped-def]
    return node(
        "a",
        [
            peer("b", endpoint="198.18.0.2", local_ts=["198.19.1.0/24"], remote_ts=["198.19.2.0/24"]),
            peer(
                "c",
                endpoint="198.18.0.3",
                local_ts=["198.18.0.1/32"],
                remote_ts=["198.18.0.3/32"],
                mode="transport",
            ),
        ],
    )


def test_route_source_is_a_local_address_inside_the_paired_local_selector() -> None:
    addrs = ["127.0.0.1", "198.18.0.1", "198.19.1.1", "fd00::1"]
    assert route_src("198.19.2.0/24", _cfg(), addrs) == "198.19.1.1"
    assert route_src("198.18.0.3/32", _cfg(), addrs) == "198.18.0.1"  # transport: our underlay
    assert route_src("198.19.2.0/24", _cfg(), ["198.18.0.1"]) is None  # none: let the kernel pick
    assert route_src("198.19.9.0/24", _cfg(), addrs) is None


def test_load_config_json_and_binary(tmp_path: Path) -> None:
    cfg = _cfg()
    (tmp_path / "n.json").write_text(json_format.MessageToJson(cfg))
    (tmp_path / "n.pb").write_bytes(cfg.SerializeToString())
    assert load_config(tmp_path / "n.json") == cfg
    assert load_config(tmp_path / "n.pb") == cfg
    (tmp_path / "bad.json").write_text('{"peers": [{"nmae": "x"}]}')
    with pytest.raises(ValueError, match=r"bad\.json: not a NodeConfig"):
        load_config(tmp_path / "bad.json")


def test_failure_kind_is_the_notify_name_not_the_exchange() -> None:
    from meshsec.agent.runtime.host import _failure_kind

    assert _failure_kind("AUTHENTICATION_FAILED: peer identity x is not y") == "AUTHENTICATION_FAILED"
    assert _failure_kind("IKE_SA_INIT from 198.18.0.1: NO_PROPOSAL_CHOSEN: none") == "NO_PROPOSAL_CHOSEN"
    assert _failure_kind("half-open SA expired: no IKE_AUTH within 30 s") == "TIMEOUT"
    assert _failure_kind("something else") == "OTHER"
