"""`meshctl token create --uses N` sends N and shows it; a count below 1 is a usage error."""

from __future__ import annotations

import json

import pytest
from meshsec.controller.cli.main import main

from .conftest import Controller


def test_token_create_with_uses(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--uses", "40", "-o", "json", *controller.args()]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["uses"] == 40 and data["token"]
    assert controller.service.tokens[-1].uses == 40
    assert main(["token", "create", *controller.args()]) == 0
    assert controller.service.tokens[-1].uses == 1
    capsys.readouterr()
    assert main(["token", "create", "--uses", "0", *controller.args()]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--uses" in err
