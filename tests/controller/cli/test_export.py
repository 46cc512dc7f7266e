"""`meshctl export`: keys only with --show-secrets, a hint on stderr otherwise, --dir writes a swanctl
directory (swanctl.conf mode 0600 plus x509ca/), and a node certificate is refused.

Against the in-process AdminService of conftest.py (real mTLS on a unix socket, the real renderer).
The controller side of Export (real etcd, the real PSK derivation): tests/controller/api/test_export_rpc.py.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

import pytest
from meshsec.controller.cli.main import main

from .conftest import FAKE_CA_PEM, Controller, fake_psk

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "mesh.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def apply(controller: Controller, capsys: pytest.CaptureFixture[str], path: Path = EXAMPLE) -> None:
    assert run(capsys, "apply", "-f", str(path), *controller.args())[0] == 0


def test_show_secrets_prints_the_pair_key(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    apply(controller, capsys)
    code, out, err = run(capsys, "export", "legacy-fw", "--show-secrets", *controller.args())
    assert (code, err) == (0, "")
    assert controller.service.exports[-1].include_secrets
    (key,) = re.findall(r"secret = 0x([0-9a-f]+)", out)
    assert hmac.compare_digest(bytes.fromhex(key), fake_psk("gw-paris", "legacy-fw"))
    assert "REPLACE-WITH" not in out


def test_without_the_flag_placeholders_and_a_hint(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    apply(controller, capsys)
    code, out, err = run(capsys, "export", "legacy-fw", *controller.args())
    assert code == 0 and fake_psk("gw-paris", "legacy-fw").hex() not in out
    assert err == (
        "meshctl: pre-shared keys are placeholders; `meshctl export legacy-fw --show-secrets` prints them "
        "(the controller logs the request)\n"
    )


def test_dir_writes_a_swanctl_directory(
    controller: Controller, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(EXAMPLE.read_text().replace("    auth: psk                   #", "    #"))
    apply(controller, capsys, mesh)
    code, out, err = run(capsys, "export", "legacy-fw", *controller.args())
    assert code == 0 and "auth = pubkey" in out
    assert err == (
        "meshctl: certificate auth also needs x509ca/meshsec-ca.pem beside swanctl.conf; "
        "`meshctl export legacy-fw --dir DIR` writes them\n"
    )
    swan = tmp_path / "swanctl"
    (swan).mkdir()
    (swan / "swanctl.conf").write_text("old\n")
    (swan / "swanctl.conf").chmod(0o644)
    assert run(capsys, "export", "legacy-fw", "--dir", str(swan), *controller.args()) == (0, "", "")
    assert (swan / "swanctl.conf").read_text() == out
    assert (swan / "swanctl.conf").stat().st_mode & 0o777 == 0o600  # tightened even though it existed
    assert (swan / "x509ca" / "meshsec-ca.pem").read_text() == FAKE_CA_PEM


def test_dir_with_secrets_is_owner_only(
    controller: Controller, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    apply(controller, capsys)
    swan = tmp_path / "new" / "swanctl"
    assert run(capsys, "export", "legacy-fw", "--show-secrets", "--dir", str(swan), *controller.args()) == (
        0,
        "",
        "",
    )
    assert "secret = 0x" in (swan / "swanctl.conf").read_text()
    assert (swan / "swanctl.conf").stat().st_mode & 0o777 == 0o600
    assert not (swan / "x509ca").exists()  # PSK: no CA files


def test_node_certificate_cannot_export(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    apply(controller, capsys)
    code, out, err = run(capsys, "export", "legacy-fw", "--show-secrets", *controller.args("node"))
    assert code == 4 and out == "" and "permission denied" in err
    assert not controller.service.exports
