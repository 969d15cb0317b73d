"""Patch formats and server-side-apply field ownership, as the API server applies them.

Field paths use the element spelling of ``metadata.managedFields[].fieldsV1``: ``f:<field>`` for a
map field, ``k:{"type":"Ready"}`` for an item of an associative list, ``.`` for the item itself.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import jsonpointer  # type: ignore[import-untyped]

Path = tuple[str, ...]

# Associative lists (listType=map / patchMergeKey) by field name, for the kinds cilia reads and writes.
LIST_MAP_KEYS: dict[str, tuple[str, ...]] = {
    "conditions": ("type",),
    "listeners": ("name",),
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
}


class PatchError(ValueError):
    """A patch the server cannot apply (422 on a real server)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def list_keys(field: str | None, items: Any) -> tuple[str, ...] | None:
    """Merge keys of an associative list, or None when the list is atomic."""
    if field is None or not isinstance(items, list) or not items:
        return None
    keys = LIST_MAP_KEYS.get(field)
    if keys is None:
        return None
    if all(isinstance(i, dict) and all(k in i for k in keys) for i in items):
        return keys
    return None


def _item_key(item: dict[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(item.get(k) for k in keys)


def strategic_merge_patch(target: Any, patch: Any, field: str | None = None) -> Any:
    """Strategic merge patch for built-in kinds: merge patch plus keyed list merging and directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    body = {
        k: v
        for k, v in patch.items()
        if k != "$patch" and not k.startswith("$setElementOrder/") and k != "$retainKeys"
    }
    if directive == "replace":
        return copy.deepcopy({k: v for k, v in body.items() if not k.startswith("$")})
    if directive == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in body.items():
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(result.get(name), list):
                result[name] = [x for x in result[name] if x not in (v or [])]
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, list) and isinstance(result.get(k), list) and LIST_MAP_KEYS.get(k):
            result[k] = _strategic_list(result[k], v, LIST_MAP_KEYS[k])
        else:
            merged = strategic_merge_patch(result.get(k), v, k)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
    return result


def _strategic_list(current: list[Any], patch: list[Any], keys: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or not all(k in item for k in keys):
            raise PatchError(f"list item {item!r} lacks merge key {'/'.join(keys)}")
        key = _item_key(item, keys)
        idx = next(
            (n for n, cur in enumerate(out) if isinstance(cur, dict) and _item_key(cur, keys) == key), None
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(copy.deepcopy(item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def json_patch(target: Any, ops: list[Any]) -> Any:
    """RFC 6902 JSON patch."""
    try:
        return jsonpatch.JsonPatch(ops).apply(copy.deepcopy(target))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, TypeError) as exc:
        raise PatchError(str(exc)) from exc


# ---------------------------------------------------------------- server-side apply field sets


def key_element(item: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "k:" + json.dumps({k: item[k] for k in keys}, sort_keys=True, separators=(",", ":"))


def leaf_paths(value: Any, prefix: Path = (), field: str | None = None) -> set[Path]:
    """Every leaf field of ``value``: scalars, atomic lists, empty maps, items of associative lists."""
    if isinstance(value, dict) and value:
        out: set[Path] = set()
        for k, v in value.items():
            if v is None:
                continue
            out |= leaf_paths(v, (*prefix, "f:" + k), k)
        return out
    keys = list_keys(field, value)
    if keys is not None:
        out = set()
        for item in value:
            kp = (*prefix, key_element(item, keys))
            out.add((*kp, "."))
            out |= leaf_paths(item, kp, None)
        return out
    return {prefix}


def _child(cur: Any, elem: str) -> tuple[bool, Any]:
    if elem == ".":
        return True, cur
    if elem.startswith("f:"):
        if isinstance(cur, dict) and elem[2:] in cur:
            return True, cur[elem[2:]]
        return False, None
    if elem.startswith("k:") and isinstance(cur, list):
        want = json.loads(elem[2:])
        for item in cur:
            if isinstance(item, dict) and all(item.get(k) == v for k, v in want.items()):
                return True, item
    return False, None


def get_path(obj: Any, path: Path) -> tuple[bool, Any]:
    cur = obj
    for elem in path:
        found, cur = _child(cur, elem)
        if not found:
            return False, None
    return True, cur


def delete_path(obj: dict[str, Any], path: Path) -> None:
    """Remove the field or list item at ``path``, then prune maps and lists left empty by it."""
    if not path:
        return
    if path[-1] == ".":
        path = path[:-1]
    found, parent = get_path(obj, path[:-1])
    if not found:
        return
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("k:") and isinstance(parent, list):
        want = json.loads(last[2:])
        parent[:] = [
            i for i in parent if not (isinstance(i, dict) and all(i.get(k) == v for k, v in want.items()))
        ]
    # prune emptied containers, never the top-level field itself
    for depth in range(len(path) - 1, 1, -1):
        found, node = get_path(obj, path[:depth])
        if found and node in ({}, []):
            delete_path(obj, path[:depth])
        else:
            break


def apply_merge(dst: Any, src: Any, field: str | None = None) -> Any:
    """Merge an applied configuration into the live object (maps merge, associative lists by key)."""
    if isinstance(src, dict) and isinstance(dst, dict):
        out = dst
        for k, v in src.items():
            if v is None:
                continue
            out[k] = apply_merge(out.get(k), v, k)
        return out
    if isinstance(src, dict):
        return apply_merge({}, src, field)
    keys = list_keys(field, src)
    if keys is not None and isinstance(dst, list) and (not dst or list_keys(field, dst) == keys):
        out_list = dst
        for item in src:
            key = _item_key(item, keys)
            idx = next((n for n, cur in enumerate(out_list) if _item_key(cur, keys) == key), None)
            if idx is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[idx] = apply_merge(out_list[idx], item, None)
        return out_list
    return copy.deepcopy(src)


def changed_paths(old: Any, new: Any) -> tuple[set[Path], set[Path]]:
    """Leaf paths set or changed by going from ``old`` to ``new``, and leaf paths removed."""
    old_p, new_p = leaf_paths(old), leaf_paths(new)
    changed = {p for p in new_p if p[-1:] != (".",) and get_path(old, p) != get_path(new, p)}
    changed |= {p for p in new_p - old_p if p[-1:] == (".",)}
    return changed, old_p - new_p


def fields_to_v1(paths: Iterable[Path]) -> dict[str, Any]:
    trie: dict[str, Any] = {}
    for path in paths:
        node = trie
        for elem in path:
            node = node.setdefault(elem, {})
    return trie


def fields_from_v1(trie: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for elem, child in trie.items():
        p = (*prefix, elem)
        if child:
            out |= fields_from_v1(child, p)
        else:
            out.add(p)
    return out


def render_path(path: Path) -> str:
    """``.status.conditions[type="Ready"].status`` style, as in apply conflict messages."""
    out = []
    for elem in path:
        if elem.startswith("f:"):
            out.append("." + elem[2:])
        elif elem.startswith("k:"):
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(elem[2:]).items()) + "]")
    return "".join(out)
