"""meshctl against a fake AdminService on a unix socket with real mTLS: outputs, exit codes, errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from meshsec.controller.cli.main import main

from .conftest import Controller

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "mesh.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_apply_stores_and_prints_the_plan(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "apply", "-f", str(EXAMPLE), *controller.args())
    assert (code, err) == (0, "")
    assert controller.service.version == 1 and len(controller.service.spec.nodes) == 7
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NODE", "PEERS", "ADDED"]
    assert any(r.startswith("gw-paris") and "legacy-fw" in r and "legacy-fw/partner" in r for r in rows)
    # applying the same spec again changes nothing and prints nothing
    assert run(capsys, "apply", "-f", str(EXAMPLE), *controller.args()) == (0, "", "")


def test_dry_run_stores_nothing_and_json_parses(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "apply", "-f", str(EXAMPLE), "--dry-run", "-o", "json", *controller.args())
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["dryRun"] is True and data["version"] == "0") or data["version"] == 0
    plans = {p["node"]: p for p in data["plan"]}
    assert plans["laptop-7"]["peersAdded"] == ["gw-berlin"]
    assert controller.service.version == 0


def test_invalid_spec_exits_2_with_one_line_per_error(
    controller: Controller, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text(
        EXAMPLE.read_text().replace("198.19.0.2/32", "198.19.0.2/33").replace("behindNat", "behind_nat")
    )
    code, out, err = run(capsys, "apply", "-f", str(bad), *controller.args())
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "mesh.yaml:23: nodes[1].subnets[0]: '198.19.0.2/33' is not a CIDR",
        "mesh.yaml:34: nodes[4].behind_nat: unknown field 'behind_nat'; did you mean 'behindNat'?",
    ]
    assert controller.service.version == 0
    # problems only the controller can see come back the same way
    server_side = tmp_path / "other.yaml"
    server_side.write_text(EXAMPLE.read_text() + "# server-only-problem\n")
    code, out, err = run(capsys, "apply", "-f", str(server_side), *controller.args())
    assert (code, out) == (2, "")
    assert one_line(err) == "other.yaml:3: nodes[0].name: node 'x' is enrolled elsewhere"


def test_unreachable_controller(certs: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    creds = [
        "--ca",
        str(certs / "ca.pem"),
        "--cert",
        str(certs / "admin.pem"),
        "--key",
        str(certs / "admin.key"),
    ]
    code, _, err = run(capsys, "get", "nodes", *creds)  # the default address
    assert code == 3
    assert one_line(err) == (
        "meshctl: cannot reach controller at unix:///run/meshsec/controller.sock: no such file; "
        "is meshsec-controller running?"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "get", "nodes", "--controller", f"127.0.0.1:{port}", "--timeout", "5", *creds)
    assert code == 3
    assert one_line(err) == (
        f"meshctl: cannot reach controller at 127.0.0.1:{port}: connection refused; "
        "is meshsec-controller running?"
    )


def test_permission_denied_and_missing_credentials(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "get", "nodes", *controller.args("node"))
    assert code == 4
    assert one_line(err).startswith(
        "meshctl: permission denied: the controller requires an admin certificate "
        "(--cert/--key or meshctl.yaml)"
    )
    code, _, err = run(capsys, "get", "nodes", "--controller", controller.address)
    assert code == 4
    assert one_line(err).startswith("meshctl: no admin credentials (--ca, --cert, --key not set)")
    code, _, err = run(capsys, "get", "nodes", *controller.args("stranger"))
    assert code == 4  # a client certificate from another CA: the server ends the handshake
    assert one_line(err) == (
        f"meshctl: controller at {controller.address} closed the connection during the TLS handshake: "
        "the controller requires an admin certificate (--cert/--key or meshctl.yaml) issued by the mesh CA"
    )
    wrong_ca = controller.args()
    wrong_ca[3] = str(controller.dir / "stranger.pem")  # a CA that did not sign the server's certificate
    code, _, err = run(capsys, "get", "nodes", *wrong_ca)
    assert code == 4
    assert one_line(err).startswith(f"meshctl: TLS handshake with controller at {controller.address} failed")


def test_get_in_every_format(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "apply", "-f", str(EXAMPLE), *controller.args())[0] == 0
    code, out, _ = run(capsys, "get", "nodes", *controller.args())
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "KIND", "SITE"]
    assert [line.split()[0] for line in lines[1:]] == sorted(n.name for n in controller.service.spec.nodes)
    row = next(line.split() for line in lines if line.startswith("gw-berlin"))
    assert row[:6] == ["gw-berlin", "agent", "berlin", "198.18.0.1,[fd00::1]:4500", "198.19.0.1/32", "yes"]
    nodes = json.loads(run(capsys, "get", "nodes", "-o", "json", *controller.args())[1])
    by_name = {n["name"]: n for n in nodes}
    assert by_name["gw-berlin"]["connected"] is True and by_name["legacy-fw"]["kind"] == "external"
    policies = yaml.safe_load(run(capsys, "get", "policies", "-o", "yaml", *controller.args())[1])
    assert [p["name"] for p in policies] == ["sites", "servers", "branches", "db-replication", "partner"]
    out = run(capsys, "get", "profiles", *controller.args())[1]
    assert "chacha20poly1305-prfsha256-x25519" in out
    out = run(capsys, "get", "sites", *controller.args())[1]
    assert out.splitlines()[1].split() == ["berlin", "198.19.16.0/20,fd00:10::/48", "gw-berlin"]
    spec_yaml = run(capsys, "get", "spec", *controller.args())[1]
    assert yaml.safe_load(spec_yaml)["apiVersion"] == "meshsec.io/v1"


def test_node_show_and_delete(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "apply", "-f", str(EXAMPLE), *controller.args())
    code, out, _ = run(capsys, "node", "show", "legacy-fw", *controller.args())
    assert code == 0 and yaml.safe_load(out)["kind"] == "external"
    assert run(capsys, "node", "delete", "shop-3", *controller.args()) == (0, "", "")
    code, _, err = run(capsys, "node", "delete", "shop-3", *controller.args())
    assert code == 5 and one_line(err) == "meshctl: node 'shop-3' not found"


def test_status_table_matrix_and_json(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", *controller.args())
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["NODE", "CONNECTED", "VERSION", "PEERS", "UP", "REPORTED", "ERRORS"]
    assert lines[1][:4] == ["a", "yes", "3", "1/2"]
    assert ["a", "·", "up", "FAIL"] in lines and ["b", "up", "·"] in lines
    code, out, _ = run(capsys, "status", "a", *controller.args())
    assert "AUTHENTICATION_FAILED: bad cert" in out and "1.5ms" in out
    row_b = next(line.split() for line in out.splitlines() if line.startswith("b "))
    assert row_b[:3] == ["b", "up", "2m"]  # SA age
    assert "1.5 KiB / 3.0 MiB" in out  # bytes in / out over the peer's child SAs
    data = json.loads(run(capsys, "status", "-o", "json", *controller.args())[1])
    assert [n["node"] for n in data["nodes"]] == ["a", "b"]
    code, _, err = run(capsys, "status", "zz", *controller.args())
    assert code == 5 and "no status for node 'zz'" in one_line(err)


def test_token_create(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "token", "create", "--node", "db-1", "--ttl", "30m", *controller.args()) == (
        0,
        "tok123.secret456\n",
        "",
    )
    assert controller.service.tokens[-1].ttl_seconds == 1800 and controller.service.tokens[-1].node == "db-1"
    code, _, err = run(capsys, "token", "create", "--ttl", "4x", *controller.args())
    assert code == 1 and one_line(err).startswith("meshctl: --ttl: '4x' is not a duration")


def test_config_file_and_env(
    controller: Controller,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf_dir = tmp_path / "admin"
    conf_dir.mkdir()
    for name in ("ca.pem", "admin.pem", "admin.key"):
        (conf_dir / name).write_bytes((controller.dir / name).read_bytes())
    conf = conf_dir / "meshctl.yaml"
    conf.write_text(f"controller: {controller.address}\nca: ca.pem\ncert: admin.pem\nkey: admin.key\n")
    monkeypatch.setenv("MESHCTL_CONFIG", str(conf))
    assert run(capsys, "token", "create")[0] == 0
    monkeypatch.setenv("MESHSEC_CERT", str(controller.dir / "node.pem"))
    monkeypatch.setenv("MESHSEC_KEY", str(controller.dir / "node.key"))
    assert run(capsys, "token", "create")[0] == 4  # env beats the config file
    conf.write_text("controler: x\n")
    code, _, err = run(capsys, "token", "create")
    assert code == 1 and "unknown key 'controler'" in one_line(err)


def test_usage_errors_exit_1_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "get", "widgets")
    assert code == 1 and "invalid choice: 'widgets'" in one_line(err)
    code, _, err = run(capsys, "apply", "-f", "/nonexistent/mesh.yaml")
    assert (
        code == 1
        and one_line(err) == "meshctl: cannot read /nonexistent/mesh.yaml: No such file or directory"
    )


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "2  invalid mesh.yaml" in out and "3  controller unreachable" in out and "4  unauthorized" in out


def test_status_watch_refreshes_until_interrupted(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = []

    def sleep(seconds: float) -> None:
        rounds.append(seconds)
        if len(rounds) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("meshsec.controller.cli.main.time.sleep", sleep)
    code, out, err = run(capsys, "status", "--watch", "--interval", "1", *controller.args())
    assert (code, err, rounds) == (0, "", [1.0, 1.0])
    assert out.count("PEERS UP") == 2


def test_export_swanctl_for_an_external_node(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "apply", "-f", str(EXAMPLE), *controller.args())
    code, out, err = run(capsys, "export", "legacy-fw", "--format", "swanctl", *controller.args())
    assert code == 0 and "--show-secrets" in one_line(err)  # how to get the keys, on stderr
    assert "meshsec-gw-paris {" in out and "local_ts = 198.19.200.0/24" in out
    assert 'secret = "REPLACE-WITH-THE-PAIR-PSK"' in out  # keys only on explicit request
    assert not controller.service.exports[-1].include_secrets
    assert out.count("{") == out.count("}")
    code, _, err = run(capsys, "export", "gw-paris", *controller.args())
    assert (
        code == 1
        and one_line(err) == "meshctl: node 'gw-paris' is an agent; only external nodes are exported"
    )
    code, _, err = run(capsys, "export", "nope", *controller.args())
    assert code == 5 and one_line(err) == "meshctl: node 'nope' not found"


def test_empty_lists_say_so_on_stderr(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "get", "nodes", *controller.args()) == (0, "", "no nodes in the spec\n")
    assert json.loads(run(capsys, "get", "nodes", "-o", "json", *controller.args())[1]) == []


def test_node_show_as_table(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "apply", "-f", str(EXAMPLE), *controller.args())
    code, out, _ = run(capsys, "node", "show", "db-1", "-o", "table", *controller.args())
    rows = {line.split()[0]: line.split(None, 1)[1].strip() for line in out.splitlines()[1:]}
    assert code == 0 and rows["labels"] == "role=server, tier=db" and rows["endpoints"] == "198.18.1.1"
