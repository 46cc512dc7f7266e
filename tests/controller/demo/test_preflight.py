"""`meshsec demo` refuses clearly, with the fix, on a machine that cannot run it; usage errors exit 2."""

from __future__ import annotations

import pytest
from meshsec.controller.demo import main as demo_main
from meshsec.controller.demo import preflight


def test_not_root_is_refused_with_exit_code_3(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    assert preflight.problems() == [
        "needs root: it creates network namespaces and TUN devices (run: sudo meshsec demo)"
    ]
    assert demo_main.main(["demo"]) == 3
    assert "meshsec demo: needs root" in capsys.readouterr().out


def test_missing_tun_and_tools_are_each_named_with_their_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    monkeypatch.setattr(preflight, "TUN", "/nonexistent/net/tun")
    monkeypatch.setattr(
        preflight.shutil, "which", lambda tool: None if tool == "iperf3" else f"/usr/bin/{tool}"
    )
    got = preflight.problems()
    assert (
        "cannot open /nonexistent/net/tun: No such file or directory; load the tun module (modprobe tun)"
        in got
    )
    assert any(p.startswith("iperf3 not found") and "bash .ci/setup" in p for p in got)
    assert not any(p.startswith(("etcd", "ping")) for p in got)


def test_usage_errors_exit_2_and_help_documents_exit_codes(capsys) -> None:  # type: ignore[no-untyped-def]
    assert demo_main.main([]) == 2
    with pytest.raises(SystemExit) as exc:
        demo_main.main(["demo", "--nodes", "many"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        demo_main.main(["demo", "--help"])
    assert exc.value.code == 0
    assert "3    this machine cannot run the demo" in capsys.readouterr().out
