"""Parse user-written Envoy resources (JSON with `@type`) into messages.

CiliumEnvoyConfig resources are arbitrary typed `Any`s; every nested `@type` must be known to the
protobuf pool, so the first use imports every Envoy message module of xds-protos (about half a second).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from cilia.render.validate import validate_message
from cilia.untrusted import format_path

_loaded = False
_lock = threading.Lock()
_ROOT_PACKAGES = ("envoy", "xds", "udpa", "validate", "contrib")


def load_all_envoy_types() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        for root in _ROOT_PACKAGES:
            try:
                pkg = importlib.import_module(root)
            except ImportError:
                continue
            for info in pkgutil.walk_packages(pkg.__path__, root + "."):
                if info.name.endswith("_pb2"):
                    try:
                        importlib.import_module(info.name)
                    except Exception:
                        continue
        _loaded = True


class RawParseError(ValueError):
    verb = "does not parse"


class RawValidationError(RawParseError):
    """Parses, but breaks a field rule Envoy enforces (render/validate.py)."""

    verb = "is not valid"


def _check_nested_types(body: Mapping[str, Any]) -> None:
    """Every nested `@type` is a string: protobuf's JSON parser fails on others with AttributeError."""
    stack: list[tuple[Any, Any]] = [(v, (k, None)) for k, v in body.items()]  # (node, (key, parent path))
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            if "@type" in node and not isinstance(node["@type"], str):
                raise RawParseError(f"{format_path(path, keep=12)}.@type: must be a type URL string, "
                                    f"got {type(node['@type']).__name__}")
            stack.extend((v, (k, path)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (i, path)) for i, v in enumerate(node))


def parse_raw(type_url: str, body: Mapping[str, Any]) -> Message:
    """The message for `body`, or RawParseError with protobuf's reason (RawValidationError: a field
    rule Envoy enforces is broken)."""
    load_all_envoy_types()
    _check_nested_types(body)
    full_name = type_url.rsplit("/", 1)[-1]
    try:
        cls = symbol_database.Default().GetSymbol(full_name)
    except KeyError:
        raise RawParseError(f"unknown type {type_url!r}") from None
    msg = cls()
    data = {k: v for k, v in body.items() if k != "@type"}
    try:
        json_format.ParseDict(data, msg, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        text = str(exc).replace("\n", " ")
        # protobuf appends every field name of the message; the first part says what is wrong.
        raise RawParseError(text.split(".  Available Fields")[0]) from None
    except Exception as exc:  # the parser meets user input here: whatever it raises, the resource is bad
        raise RawParseError(f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]) from None
    errors = validate_message(msg)
    if errors:
        raise RawValidationError("; ".join(errors))
    return msg
