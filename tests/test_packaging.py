"""Everything installs under the one namespace `meshsec`; no package directory is forgotten."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = config["package-dir"]
    found = set()
    for package, directory in roots.items():
        base = ROOT / directory
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([package, *rel.parts]))
    assert found == listed, (
        f"pyproject packages out of date: missing {found - listed}, extra {listed - found}"
    )
    assert all(name.startswith("meshsec.") for name in listed)
