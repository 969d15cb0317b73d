"""copy_json must copy CEC resource JSON as copy.deepcopy does (the parser then edits the copy in place)."""

from __future__ import annotations

import copy
import datetime
import random
from typing import Any

import pytest

from cilia.translate.cec_parse import copy_json


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 5 else 5)
    if kind == 0:
        return rng.choice(["", "a", "é", "bench/svc-1"])
    if kind == 1:
        return rng.choice([0, -1, 2**70, 1.5, float("inf")])
    if kind == 2:
        return rng.choice([True, False])
    if kind == 3:
        return None
    if kind == 4:
        return rng.choice([datetime.date(2024, 1, 2), b"bin", ("t", [1])])
    if kind in (5, 6):
        return {rng.choice(["k", "name", "@type", "x", 1, 2]): _random_json(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def _shape(v: Any, ids: dict[int, int]) -> Any:
    """The structure with shared containers named by first-visit order (so aliasing is compared too)."""
    if isinstance(v, dict | list):
        if id(v) in ids:
            return ("seen", ids[id(v)])
        ids[id(v)] = len(ids)
        if isinstance(v, dict):
            return ("dict", [(k, _shape(x, ids)) for k, x in v.items()])
        return ("list", [_shape(x, ids) for x in v])
    return (type(v).__name__, repr(v))


def _containers(v: Any, out: set[int]) -> set[int]:
    if isinstance(v, dict | list) and id(v) not in out:
        out.add(id(v))
        for x in (v.values() if isinstance(v, dict) else v):
            _containers(x, out)
    return out


@pytest.mark.parametrize("seed", range(60))
def test_copy_json_copies_as_deepcopy(seed: int) -> None:
    rng = random.Random(seed)
    value = {"resources": _random_json(rng), "n": 1}
    shared = {"name": "x", "l": [1, {"a": 2}]}
    value["twice"] = [shared, shared, shared["l"]]  # held more than once (YAML anchors)
    got, want = copy_json(value), copy.deepcopy(value)
    assert got == want
    assert _shape(got, {}) == _shape(want, {})
    assert not _containers(got, set()) & _containers(value, set())  # nothing mutable shared
    got["twice"][0]["name"] = "y"
    assert got["twice"][1]["name"] == "y" and value["twice"][0]["name"] == "x"
