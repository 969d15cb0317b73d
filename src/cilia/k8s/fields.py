"""Small typed accessors for raw object fields; each error names the dotted field path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cilia.errors import ValidationError


def as_map(value: Any, path: str, *, required: bool = False) -> Mapping[str, Any]:
    if value is None:
        if required:
            raise ValidationError(path, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def as_list(value: Any, path: str, *, required: bool = False) -> list[Any]:
    if value is None:
        if required:
            raise ValidationError(path, "is required")
        return []
    if not isinstance(value, list):
        raise ValidationError(path, f"must be a list, got {type(value).__name__}")
    return value


def get_str(m: Mapping[str, Any], key: str, path: str, *, default: str | None = None,
            required: bool = False) -> str:
    value = m.get(key)
    if value is None:
        if required:
            raise ValidationError(f"{path}.{key}" if path else key, "is required")
        return default if default is not None else ""
    if not isinstance(value, str):
        raise ValidationError(f"{path}.{key}" if path else key, f"must be a string, got {type(value).__name__}")
    return value


def get_int(m: Mapping[str, Any], key: str, path: str, *, default: int | None = None, required: bool = False,
            minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = m.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        if required:
            raise ValidationError(where, "is required")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(where, f"must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValidationError(where, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValidationError(where, f"must be <= {maximum}, got {value}")
    return value


def get_port(m: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> int | None:
    return get_int(m, key, path, required=required, minimum=1, maximum=65535)


def get_bool(m: Mapping[str, Any], key: str, path: str, *, default: bool | None = None) -> bool | None:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationError(f"{path}.{key}", f"must be a boolean, got {type(value).__name__}")
    return value


def str_map(value: Any, path: str) -> dict[str, str]:
    m = as_map(value, path)
    out: dict[str, str] = {}
    for k, v in m.items():
        if not isinstance(v, str):
            raise ValidationError(f"{path}.{k}", f"must be a string, got {type(v).__name__}")
        out[str(k)] = v
    return out


def int_or_str(value: Any, path: str) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(path, f"must be an integer or a string, got {type(value).__name__}")
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value
