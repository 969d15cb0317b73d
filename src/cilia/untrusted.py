"""Reading untrusted input within explicit limits: size, nesting depth, document count, YAML aliases.

Manifests, Kubernetes API responses and watch events, and AdmissionReviews pass through here before
anything else reads them, so that a hostile or broken input becomes an error on that input (a file, a
document, an object, a request) and never an exception that ends the server. Every check below is
iterative: none of them recurses, so none can exhaust the stack on the input it is guarding against.

What the parsers themselves do, and what is added here:

* JSON (``json.loads``) recurses once per nesting level. Past the interpreter's recursion limit it
  raises ``RecursionError``, which no caller expected; an input nested 100,000 levels deep ended
  ``cilia serve``. :func:`loads_json` measures the nesting first (regular expressions, no recursion)
  and either refuses the text or cuts every subtree below the limit down to the marker
  :data:`TOO_DEEP`, which :func:`check_tree` then reports with the field path where it sits.
* YAML through libyaml (``CSafeLoader``) stops at 1,000 levels with a ``ScannerError``; the pure-Python
  loader recurses and raises ``RecursionError``. Both are turned into a parse error of the file.
* YAML aliases are not copied by PyYAML: ``*a`` is the very object that ``&a`` built, so a "billion
  laughs" file of a few hundred bytes loads instantly into a small graph that *expands* to 10^9 nodes
  for anything that walks it (hashing, translating). An alias may also point into its own anchor and
  build a cycle. :func:`check_tree` walks each document once, counts every node reached again through
  an alias against :data:`MAX_ALIAS_EXPANSION` per file, and names cycles.
* YAML merge keys (``<<``) expanded exponentially in PyYAML before 6.0.4, which deduplicates merged
  keys; cilia requires that version.
* Mapping keys must be strings, as in JSON and Kubernetes; YAML allows numbers, dates and null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import yaml

from cilia.errors import ValidationError

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
"""Largest manifest file read (16 MiB); a larger file is an error on that file."""
MAX_NESTING_DEPTH = 100
"""Deepest nesting of mappings and lists in one object (the object itself is level 1). Real objects stay
far below: a CiliumEnvoyConfig carrying a full HTTP connection manager is about 25 levels deep."""
MAX_DOCUMENTS_PER_FILE = 20_000
"""Most documents (after expanding `kind: List` items) read from one manifest file."""
MAX_ALIAS_EXPANSION = 100_000
"""Most nodes reached again through YAML aliases in one file: plenty for shared blocks, far below a bomb."""

TOO_DEEP = "\x00cilia: nested too deep"
"""Stands in for a JSON subtree cut at the depth limit; :func:`check_tree` reports where it sits."""
_TOO_DEEP_JSON = json.dumps(TOO_DEEP)

_JSON_ESCAPE = re.compile(r"\\.", re.DOTALL)
_KEEP_QUOTES_AND_BRACKETS = {c: None for c in range(128) if chr(c) not in '"[]{}'}
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1
_CHUNK = 1 << 16
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class InputLimitError(ValidationError):
    """An input is over one of the limits of this module; `field` says where, when that is known."""


# -- JSON -------------------------------------------------------------------------------------------------
def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether JSON `text` nests containers more than `limit` deep, without decoding it.

    Escapes are dropped, then everything but quotes and brackets; what lies between quote pairs is string
    content and goes too. The running depth over the remaining brackets is summed in chunks by
    `itertools.accumulate`, stopping at the first chunk that goes too deep. For malformed text this
    over-approximates what the decoder would reach before its error, never under.
    """
    outside = "".join(_JSON_ESCAPE.sub("", text).translate(_KEEP_QUOTES_AND_BRACKETS).split('"')[::2])
    brackets = _NOT_BRACKET.sub("", outside).encode("ascii")
    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        sums = list(accumulate(map(_DELTA.__getitem__, brackets[start:start + _CHUNK]), initial=depth))
        if max(sums) > limit:
            return True
        depth = sums[-1]
    return False


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line} column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def _cap_json(text: str, limit: int, *, only_find: bool = False) -> tuple[str, int]:
    """`text` with each container opened below `limit` levels replaced by the TOO_DEEP string, and the
    offset of the first one cut (-1 if none); with `only_find`, just that offset, found as soon as it is
    met. Stops at a closing bracket with nothing open: the text is malformed there, and everything before
    it is within the limit, so the decoder fails there safely. Costs one Python step per bracket and
    string, so it only runs on text that :func:`json_depth_exceeds` found too deep."""
    out: list[str] = []
    depth = 0
    last = 0
    cut_from = -1
    first = -1
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == '"':
            continue
        if tok in "[{":
            depth += 1
            if depth == limit + 1:
                cut_from = m.start()
                if first < 0:
                    first = cut_from
                    if only_find:
                        return text, first
            continue
        if depth == limit + 1 and cut_from >= 0:
            out.append(text[last:cut_from])
            out.append(_TOO_DEEP_JSON)
            last = m.end()
            cut_from = -1
        depth -= 1
        if depth < 0:
            break
    if cut_from >= 0:  # never closed: the document is truncated anyway
        out.append(text[last:cut_from])
        out.append(_TOO_DEEP_JSON)
        last = len(text)
    out.append(text[last:])
    return "".join(out), first


def loads_json(data: str | bytes, *, max_depth: int = MAX_NESTING_DEPTH, cap: bool = False) -> Any:
    """`json.loads` that never recurses deeper than `max_depth`.

    Deeper input raises InputLimitError naming the line and column, or with `cap`, is decoded with each
    too-deep subtree replaced by TOO_DEEP (so one bad object in a list does not sink the others; run
    :func:`check_tree` on each object). Malformed JSON raises ValueError as `json.loads` does.
    """
    text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, bytes | bytearray) \
        else data
    if json_depth_exceeds(text, max_depth):
        capped, first = _cap_json(text, max_depth, only_find=not cap)
        if first >= 0 and not cap:
            raise InputLimitError("", f"nested deeper than {max_depth} levels (at {_line_col(text, first)})")
        text = capped
    return json.loads(text)


# -- YAML -------------------------------------------------------------------------------------------------
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_documents(text: str) -> Iterator[tuple[int, Any]]:
    """(index, document) for each non-empty document of a YAML stream, lazily. Raises yaml.YAMLError,
    also when the text nests too deeply for the parser (libyaml stops at 1,000 levels, the pure-Python
    parser at the recursion limit)."""
    try:
        for index, doc in enumerate(yaml.load_all(text, Loader=_Loader)):
            if doc is not None:
                yield index, doc
    except RecursionError:
        raise yaml.YAMLError(f"nested too deeply to parse (the limit is {MAX_NESTING_DEPTH} levels)") from None


# -- walking a decoded document -----------------------------------------------------------------------------
@dataclass(slots=True)
class AliasBudget:
    """Per-file state of :func:`check_tree` for YAML: containers already seen (so a second arrival is an
    alias) and how many nodes were reached through aliases so far."""

    limit: int = MAX_ALIAS_EXPANSION
    seen: set[int] = field(default_factory=set)
    expanded: int = 0


_LEAVE = object()

# One step of the path from the document root: the key or index, then the rest of the path upward.
_Path = tuple[str | int, "_Path"] | None


def format_path(path: _Path, prefix: str = "", keep: int = 8) -> str:
    """`spec.ports[0].name` style; a long path keeps its first and last few steps."""
    steps: list[str | int] = []
    while path is not None:
        steps.append(path[0])
        path = path[1]
    steps.reverse()
    left_out = 0
    if len(steps) > keep:
        left_out = len(steps) - keep
        steps = [*steps[: keep - 2], *steps[-2:]]
    out = prefix
    for i, step in enumerate(steps):
        if left_out and i == keep - 2:
            out += f"...({left_out} more)..."
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out and not out.endswith("...") else step
    return out


def check_tree(root: Any, *, max_depth: int = MAX_NESTING_DEPTH, aliases: AliasBudget | None = None,
               prefix: str = "") -> None:
    """Check one decoded document without recursion; raise InputLimitError or ValidationError naming the
    field (below `prefix`) when it nests deeper than `max_depth`, holds a TOO_DEEP marker, has a mapping
    key that is not a string, has a string that is not valid Unicode, or (with `aliases`, for YAML)
    refers to itself or expands past the budget."""
    # Stack entries: (container, depth, path, reached through an alias). With `aliases`, an entry whose
    # container is _LEAVE marks leaving one, so that `ancestors` is exactly the current path.
    stack: list[tuple[Any, int, _Path, bool]] = [(root, 1, None, False)]
    ancestors: list[Any] = []
    while stack:
        node, depth, path, via_alias = stack.pop()
        if node is _LEAVE:
            ancestors.pop()
            continue
        if not isinstance(node, dict | list | tuple):  # only the root can be a scalar here
            if node.__class__ is str:
                _check_string(node, path, prefix, max_depth)
            continue
        if aliases is not None:
            if id(node) in aliases.seen:
                if any(a is node for a in ancestors):
                    raise InputLimitError(format_path(path, prefix), "refers to itself through a YAML alias")
                if not via_alias:  # the alias itself; what is below it is counted with its parent
                    aliases.expanded += 1
                via_alias = True
            else:
                aliases.seen.add(id(node))
            if via_alias:
                aliases.expanded += len(node)
                if aliases.expanded > aliases.limit:
                    raise InputLimitError(format_path(path, prefix),
                                          f"YAML aliases expand to more than {aliases.limit} nodes in this file")
            ancestors.append(node)
            stack.append((_LEAVE, 0, None, False))
        if depth > max_depth:
            raise InputLimitError(format_path(path, prefix), f"nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise ValidationError(format_path(path, prefix),
                                          f"mapping key {key!r} must be a string, got {type(key).__name__}")
                if not key.isascii():
                    _check_unicode(key, path, prefix)
                if isinstance(value, dict | list | tuple):
                    stack.append((value, depth + 1, (key, path), via_alias))
                elif value.__class__ is str:
                    _check_string(value, (key, path), prefix, max_depth)
        else:
            for index, value in enumerate(node):
                if isinstance(value, dict | list | tuple):
                    stack.append((value, depth + 1, (index, path), via_alias))
                elif value.__class__ is str:
                    _check_string(value, (index, path), prefix, max_depth)


def _check_string(value: str, path: _Path, prefix: str, max_depth: int) -> None:
    if value == TOO_DEEP:
        raise InputLimitError(format_path(path, prefix), f"nested deeper than {max_depth} levels")
    if not value.isascii():
        _check_unicode(value, path, prefix)


def _check_unicode(text: str, path: _Path, prefix: str) -> None:
    """JSON escapes (and the pure-Python YAML parser) can make lone surrogates: not Unicode characters, so
    nothing can encode them (protobuf raised UnicodeEncodeError deep in rendering)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ValidationError(format_path(path, prefix),
                              f"{text[:40]!r} is not valid Unicode (lone surrogate {bad!r})") from None
