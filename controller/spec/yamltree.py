"""Typed, line-aware access to a composed YAML node tree.

PyYAML's composer keeps a start mark on every node, which plain `safe_load` throws away; reading the
node tree directly is what lets every problem name its line.  `Reader` collects problems instead of
raising, so one pass reports all of them.  It knows nothing about the mesh schema.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator

import yaml

from .problems import SpecProblem

__all__ = ["Reader", "compose"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG_NAMES = {
    "tag:yaml.org,2002:str": "string",
    "tag:yaml.org,2002:int": "integer",
    "tag:yaml.org,2002:float": "number",
    "tag:yaml.org,2002:bool": "boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "timestamp",
}
_TRUE = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"}
_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
MAX_DEPTH = 64  # mesh.yaml needs about 6


def compose(text: str, file: str) -> tuple[yaml.Node | None, list[SpecProblem]]:
    """Parse YAML text into a node tree, or report the syntax error with its line."""
    try:
        problem = _too_deep(text, file)
        if problem is not None:
            return None, [problem]
        return yaml.compose(text, Loader=_Loader), []
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = exc.problem or exc.context or "invalid YAML"
        return None, [SpecProblem(file, line, "", f"invalid YAML: {what}")]
    except yaml.YAMLError as exc:  # reader errors (control characters, bad encoding)
        return None, [SpecProblem(file, 0, "", f"invalid YAML: {str(exc).splitlines()[0]}")]
    except RecursionError:
        return None, [SpecProblem(file, 0, "", "invalid YAML: nested too deeply")]


def _too_deep(text: str, file: str) -> SpecProblem | None:
    """libyaml's parser is iterative but the composer recurses in C: a deeply nested document would
    overflow the C stack and kill the process, so measure the depth on the event stream first."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                return SpecProblem(file, line, "", f"invalid YAML: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return None


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    name = _TAG_NAMES.get(node.tag, node.tag)
    return f"{name} {node.value!r}" if name != "null" else "null"


class Reader:
    """Collects problems and the line of every field path it visits."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[SpecProblem] = []
        self.lines: dict[str, int] = {}

    def error(self, path: str, reason: str, node: yaml.Node | None = None, line: int | None = None) -> None:
        if line is None:
            line = node.start_mark.line + 1 if node is not None else self.lines.get(path, 0)
        self.problems.append(SpecProblem(self.file, line, path, reason))

    def seen(self, path: str, node: yaml.Node) -> None:
        self.lines[path] = node.start_mark.line + 1

    def line(self, path: str) -> int:
        return self.lines.get(path, 0)

    # --- containers -----------------------------------------------------------------------------
    def mapping(
        self, node: yaml.Node, path: str, allowed: Iterable[str]
    ) -> dict[str, tuple[str, yaml.Node]] | None:
        """Map key -> (path, value node); reports non-mappings, duplicate keys and unknown keys."""
        self.seen(path, node)
        if not isinstance(node, yaml.MappingNode):
            self.error(path, f"expected a mapping, got {kind_of(node)}", node)
            return None
        allowed = tuple(allowed)
        out: dict[str, tuple[str, yaml.Node]] = {}
        for key_node, value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                self.error(path, f"keys must be strings, got {kind_of(key_node)}", key_node)
                continue
            key = key_node.value
            sub = f"{path}.{key}" if path else key
            if key not in allowed:
                self.error(sub, self._unknown(key, allowed), key_node)
                continue
            if key in out:
                self.error(sub, f"duplicate key (first at line {self.lines[sub]})", key_node)
                continue
            self.seen(sub, value)
            out[key] = (sub, value)
        return out

    @staticmethod
    def _unknown(key: str, allowed: tuple[str, ...]) -> str:
        camel = re.sub(r"[_-]([a-z])", lambda m: m.group(1).upper(), key)
        hint = (
            [camel] if camel in allowed and camel != key else difflib.get_close_matches(key, allowed, 1, 0.6)
        )
        if hint:
            return f"unknown field {key!r}; did you mean {hint[0]!r}?"
        return f"unknown field {key!r} (known: {', '.join(allowed)})"

    def sequence(self, node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.Node]]:
        """Items of a list (null counts as empty) as (path, node)."""
        self.seen(path, node)
        if self.is_null(node):
            return
        if not isinstance(node, yaml.SequenceNode):
            self.error(path, f"expected a list, got {kind_of(node)}", node)
            return
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            self.seen(sub, item)
            yield sub, item

    # --- scalars --------------------------------------------------------------------------------
    @staticmethod
    def is_null(node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"

    def string(self, node: yaml.Node, path: str) -> str | None:
        self.seen(path, node)
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            return node.value
        hint = " (quote it)" if isinstance(node, yaml.ScalarNode) and not self.is_null(node) else ""
        self.error(path, f"expected a string, got {kind_of(node)}{hint}", node)
        return None

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        self.seen(path, node)
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            return node.value in _TRUE
        self.error(path, f"expected true or false, got {kind_of(node)}", node)
        return None

    def string_or_int(self, node: yaml.Node, path: str) -> str | int | None:
        self.seen(path, node)
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:str":
                return node.value
            if node.tag == "tag:yaml.org,2002:int" and _INT.fullmatch(node.value):
                return int(node.value.replace("_", ""))
        self.error(path, f"expected a string or an integer, got {kind_of(node)}", node)
        return None

    def string_list(self, node: yaml.Node, path: str) -> list[tuple[str, str]]:
        """(path, text) of a list of strings; bad items are reported and left out."""
        out = []
        for sub, item in self.sequence(node, path):
            text = self.string(item, sub)
            if text is not None:
                out.append((sub, text))
        return out

    def string_map(self, node: yaml.Node, path: str) -> dict[str, str]:
        """A free-form string -> string mapping (labels)."""
        self.seen(path, node)
        if self.is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.error(path, f"expected a mapping, got {kind_of(node)}", node)
            return {}
        out: dict[str, str] = {}
        for key_node, value in node.value:
            key = self.string(key_node, path)
            if key is None:
                continue
            sub = f"{path}.{key}"
            if key in out:
                self.error(sub, "duplicate key", key_node)
                continue
            text = self.string(value, sub)
            if text is not None:
                out[key] = text
        return out
