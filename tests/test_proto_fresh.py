"""The generated API modules are an artefact of proto/: regenerating them must change nothing."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def test_generated_code_is_fresh() -> None:
    generator = _load_generator()
    with tempfile.TemporaryDirectory() as tmp:
        generator.generate(Path(tmp))
        fresh, committed = _files(Path(tmp)), _files(ROOT / "proto" / "gen")
    committed = {k: v for k, v in committed.items() if "__pycache__" not in k}
    stale = sorted(k for k in fresh.keys() | committed.keys() if fresh.get(k) != committed.get(k))
    assert not stale, f"proto/gen is stale; run `python proto/generate.py` (differs: {stale})"


def test_every_proto_field_is_commented_enums_have_unspecified() -> None:
    """Google API habit: enums start with X_UNSPECIFIED = 0."""
    for proto in sorted((ROOT / "proto" / "meshsec" / "v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("enum "):
                first = next(ln for ln in lines[i + 1 :] if ln.strip() and not ln.strip().startswith("//"))
                assert "_UNSPECIFIED = 0;" in first, f"{proto.name}:{i + 1}: enum without _UNSPECIFIED = 0"
