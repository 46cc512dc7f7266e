"""mesh.yaml: parsing and validation into spec_pb2.MeshSpec (docs/mesh-yaml.md is the schema).

Public API: `load_spec(text, filename) -> MeshSpec` raising `SpecInvalid` (all problems, each with file,
line, field and reason), and `dump_spec(spec) -> str` (the YAML that loads back to the same spec).
Owns nothing outside the spec; the compiler and the controller import from here.
"""

from __future__ import annotations

from meshsec.api.v1 import spec_pb2

from .dump import dump_spec
from .loader import API_VERSION, KIND, read_spec
from .problems import SpecInvalid, SpecProblem
from .semantic import check_spec, default_identity
from .yamltree import Reader, compose

__all__ = ["API_VERSION", "KIND", "SpecInvalid", "SpecProblem", "default_identity", "dump_spec", "load_spec"]


def load_spec(text: str, filename: str = "mesh.yaml") -> spec_pb2.MeshSpec:
    """Parse and validate mesh.yaml text; defaults are filled in explicitly in the result."""
    root, problems = compose(text, filename)
    if problems:
        raise SpecInvalid(problems)
    reader = Reader(filename)
    spec, paths = read_spec(root, reader)
    check_spec(spec, paths, reader)  # also after structural problems: report everything in one go
    if reader.problems:
        raise SpecInvalid(reader.problems)
    return spec
