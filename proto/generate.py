"""Regenerate the Python protobuf/gRPC modules in proto/gen from proto/meshsec/v1/*.proto.

Run: `python proto/generate.py` (needs grpcio-tools).  The .proto files live at
proto/meshsec/v1/ (proto package `meshsec.v1`, imported as "meshsec/v1/x.proto"); protoc would make
them the Python package `meshsec.v1`, so the generated modules are moved to meshsec/api/v1/ and their
imports rewritten to `meshsec.api.v1`, the one namespace everything installs under.
tests/test_proto_fresh.py fails when the output is stale.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
SOURCE = PROTO_DIR / "meshsec" / "v1"
OUT = PROTO_DIR / "gen"
INIT = '"""Generated from proto/meshsec/v1 by proto/generate.py; do not edit."""\n'


def generate(out: Path) -> None:
    """Compile every .proto into `out`, with the package __init__ files protoc does not write."""
    import grpc_tools
    from grpc_tools import protoc  # imported here: only developers and CI need grpcio-tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(f"meshsec/v1/{p.name}" for p in SOURCE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        target = out / "meshsec" / "api" / "v1"
        target.mkdir(parents=True)
        for module in sorted((Path(raw) / "meshsec" / "v1").iterdir()):
            text = module.read_text().replace("from meshsec.v1 import", "from meshsec.api.v1 import")
            (target / module.name).write_text(text)
    for pkg in (out / "meshsec" / "api", out / "meshsec" / "api" / "v1"):
        (pkg / "__init__.py").write_text(INIT)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(tmp, OUT)
    print(f"generated {sum(1 for _ in OUT.rglob('*.py'))} modules in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
