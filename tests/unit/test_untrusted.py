"""Limits on untrusted input (cilia.untrusted): depth, aliases, keys, documents; through the manifest
parser, the store, the Kubernetes source and the webhook's review parser."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cilia.errors import ValidationError
from cilia.k8s import manifest
from cilia.k8s.manifest import parse_file, parse_text
from cilia.k8s.store import Store
from cilia.mesh.webhook import ReviewError, _parse_review
from cilia.untrusted import (
    MAX_ALIAS_EXPANSION,
    MAX_NESTING_DEPTH,
    AliasBudget,
    InputLimitError,
    check_tree,
    json_depth_exceeds,
    load_yaml_documents,
    loads_json,
)

SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  ports: [{port: 80}]\n"
DEEP_JSON = '{"a":' * 100_000 + "1" + "}" * 100_000  # ~600 KB, the reported crash


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: a few hundred bytes that expand to width**levels nodes."""
    lines = ["apiVersion: v1", "kind: Service", "metadata: {name: lol}", "spec:", "  l0: &l0 [lol]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested(depth: int) -> Any:
    """A value `depth` levels deep (lists inside mappings), built without recursion."""
    value: Any = "leaf"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def depth_of(value: Any) -> int:
    """Reference depth, iterative, for the property test."""
    best, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            best = max(best, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return best


# -- JSON ----------------------------------------------------------------------------------------------------
def test_deep_json_is_refused_quickly_with_a_position() -> None:
    t0 = time.perf_counter()
    with pytest.raises(InputLimitError, match=r"nested deeper than 100 levels \(at line 1 column 501\)"):
        loads_json(DEEP_JSON)
    assert time.perf_counter() - t0 < 2.0
    # 16 MiB of brackets, the largest manifest: still refused in bounded time, never a RecursionError
    t0 = time.perf_counter()
    with pytest.raises(InputLimitError):
        loads_json("[" * (8 << 20) + "]" * (8 << 20))
    assert time.perf_counter() - t0 < 5.0


def test_depth_limit_is_exact_and_strings_do_not_count() -> None:
    assert loads_json("[" * MAX_NESTING_DEPTH + "]" * MAX_NESTING_DEPTH) is not None
    with pytest.raises(InputLimitError):
        loads_json("[" * (MAX_NESTING_DEPTH + 1) + "]" * (MAX_NESTING_DEPTH + 1))
    tricky = {"s": "[" * 500, "t": '\\"{{{' * 100, "u": "\u00e9]]]" * 50}
    assert loads_json(json.dumps(tricky)) == tricky
    assert loads_json(json.dumps(tricky).encode("utf-16")) == tricky


@pytest.mark.parametrize("text", ["]]]", "[}", '{"a": [1, 2}', "[" * 50, '["unterminated', ""])
def test_malformed_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        loads_json(text)


def test_unterminated_deep_json_is_refused() -> None:
    with pytest.raises(InputLimitError):
        loads_json("[" * 100_000)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9', max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.integers(min_value=1, max_value=12))
def test_depth_check_agrees_with_the_decoded_depth(value: Any, limit: int) -> None:
    text = json.dumps(value)
    assert json_depth_exceeds(text, limit) == (depth_of(value) > limit)
    capped = loads_json(text, max_depth=limit, cap=True)
    if depth_of(value) <= limit:
        assert capped == value
    else:
        assert depth_of(capped) <= limit
        with pytest.raises(InputLimitError, match=f"nested deeper than {limit} levels"):
            check_tree(capped, max_depth=limit)


def test_cap_cuts_only_the_deep_object_of_a_list() -> None:
    good = {"metadata": {"name": "good"}}
    bad = {"metadata": {"name": "bad"}, "spec": nested(150)}
    answer = loads_json(json.dumps({"items": [good, bad, good]}), max_depth=MAX_NESTING_DEPTH + 2, cap=True)
    check_tree(answer["items"][0])
    check_tree(answer["items"][2])
    with pytest.raises(InputLimitError) as err:
        check_tree(answer["items"][1])
    assert err.value.field == "spec.k[0].k[0].k...(92 more)...[0].k"
    # the same with a 100,000-deep object, which json.loads alone cannot decode at all
    text = '{"items": [{"metadata": {"name": "good"}}, {"spec": ' + "[" * 100_000 + "]" * 100_000 + "}]}"
    answer = loads_json(text, max_depth=MAX_NESTING_DEPTH + 2, cap=True)
    assert answer["items"][0] == good
    with pytest.raises(InputLimitError):
        check_tree(answer["items"][1])


# -- YAML ------------------------------------------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused_in_bounded_time() -> None:
    t0 = time.perf_counter()
    budget = AliasBudget()
    with pytest.raises(InputLimitError, match=f"YAML aliases expand to more than {MAX_ALIAS_EXPANSION} nodes"):
        for _, doc in load_yaml_documents(laughs()):
            check_tree(doc, aliases=budget)
    assert time.perf_counter() - t0 < 2.0


def test_yaml_aliases_in_moderation_are_fine() -> None:
    text = "a: &labels {app: web, tier: front}\nb: *labels\nc: [*labels, *labels]\n"
    (_, doc), = load_yaml_documents(text)
    budget = AliasBudget()
    check_tree(doc, aliases=budget)
    assert budget.expanded == 3 * 3  # three aliases, each the mapping and its two values


@pytest.mark.parametrize("text", ["spec: &x [*x]", "spec: &x {a: {b: *x}}"])
def test_recursive_alias_is_named(text: str) -> None:
    (_, doc), = load_yaml_documents(text)
    with pytest.raises(InputLimitError, match="refers to itself through a YAML alias"):
        check_tree(doc, aliases=AliasBudget())


def test_yaml_merge_key_bomb_loads_in_linear_time() -> None:
    """PyYAML >= 6.0.4 drops merged keys it already has; before, this expanded to 9**9 entries."""
    lines = ["a0: &a0 {" + ", ".join(f"k{i}: v" for i in range(9)) + "}"]
    lines += [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}]}}" for i in range(1, 12)]
    t0 = time.perf_counter()
    (_, doc), = load_yaml_documents("\n".join(lines))
    assert len(doc["a11"]) == 9
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("text", ["- " * 100_000 + "x", "[" * 100_000 + "]" * 100_000,
                                  "{a: " * 50_000 + "1" + "}" * 50_000])
def test_deep_yaml_is_a_parse_error(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        list(load_yaml_documents(text))


def test_pure_python_yaml_parser_too_deep_is_a_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import cilia.untrusted as untrusted

    monkeypatch.setattr(untrusted, "_Loader", yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError, match="nested too deeply"):
        list(load_yaml_documents("[" * 5000 + "]" * 5000))


@pytest.mark.parametrize(("text", "field"), [
    ("metadata: {labels: {1: a}}", "metadata.labels"),
    ("spec: {ports: [{? [a]\n  : b}]}", None),  # a list as a key: PyYAML refuses it itself
    ("spec: {2024-01-01: x}", "spec"),
    ("spec: {null: x}", "spec"),
])
def test_mapping_keys_must_be_strings(text: str, field: str | None) -> None:
    try:
        (_, doc), = load_yaml_documents(text)
    except yaml.YAMLError:
        assert field is None
        return
    with pytest.raises(ValidationError, match="must be a string") as err:
        check_tree(doc)
    assert err.value.field == field


def test_strings_must_be_valid_unicode() -> None:
    """JSON escapes can make lone surrogates, which nothing can encode (protobuf raised in render)."""
    doc = loads_json('{"metadata": {"labels": {"a": "ok \\ud83d\\ude00", "b": "x\\udada"}}}')
    with pytest.raises(ValidationError, match=r"'x\\udada' is not valid Unicode \(lone surrogate") as err:
        check_tree(doc)
    assert err.value.field == "metadata.labels.b"
    with pytest.raises(ValidationError, match="not valid Unicode") as err:
        check_tree(loads_json('{"spec": {"\\udc00": 1}}'))
    assert err.value.field == "spec"
    check_tree(loads_json('{"a": "\\ud83d\\ude00 caf\\u00e9"}'))  # a pair is one character: fine


# -- through the manifest parser and the store --------------------------------------------------------------------
def test_deep_json_file_keeps_the_last_good_objects(tmp_path: Path) -> None:
    f = tmp_path / "svc.json"
    f.write_text(json.dumps(yaml.safe_load(SVC)))
    store = Store()
    store.replace_source(str(f), parse_file(f))
    assert store.get("Service", "default", "echo") is not None
    f.write_text(DEEP_JSON)
    result = parse_file(f)
    assert not result.ok
    assert str(result.issues[0]) == f"{f}: refused: nested deeper than 100 levels (at line 1 column 501)"
    store.replace_source(str(f), result)
    assert store.get("Service", "default", "echo") is not None, "the previous config still serves"
    assert [i.location for i in store.issues()] == [str(f)]


def test_bomb_document_is_an_issue_and_the_others_are_read() -> None:
    text = SVC + "---\n" + laughs() + "---\n" + SVC.replace("echo", "other")
    t0 = time.perf_counter()
    result = parse_text(text, "m.yaml")
    assert time.perf_counter() - t0 < 2.0
    assert result.ok and [o.meta.name for o in result.objects] == ["echo", "other"]
    (issue,) = result.issues
    assert issue.location == "m.yaml#1" and issue.object == "Service lol"
    assert "YAML aliases expand" in issue.message
    assert result.rejected == (("Service", "", "lol"),)


def test_deep_yaml_document_names_the_field() -> None:
    spec = yaml.safe_dump({"spec": {"ports": [{"port": 80, "x": nested(120)}]}})
    result = parse_text("apiVersion: v1\nkind: Service\nmetadata: {name: deep}\n" + spec, "d.yaml")
    (issue,) = result.issues
    assert issue.field == "spec.ports[0].x.k[0]...(92 more)...k[0]"
    assert issue.message == "nested deeper than 100 levels"


def test_alias_budget_is_per_file_not_per_document() -> None:
    """Many objects each using an alias to one shared block add up within one file (here a List, since
    YAML anchors do not cross documents): about 49 of them fit in the budget, the rest are issues."""
    shared = "block: &b {" + ", ".join(f"k{i}: [{', '.join(['v'] * 50)}]" for i in range(40)) + "}\n"
    items = "".join(f"- {{apiVersion: v1, kind: Namespace, metadata: {{name: n{i}}}, x: *b}}\n" for i in range(60))
    result = parse_text("apiVersion: v1\nkind: List\n" + shared + "items:\n" + items, "l.yaml")
    per_item = 1 + 40 + 40 * 50
    assert len(result.objects) == MAX_ALIAS_EXPANSION // per_item + 1  # the first use is the anchor itself
    assert {i.message for i in result.issues} == {
        f"YAML aliases expand to more than {MAX_ALIAS_EXPANSION} nodes in this file"}


def test_too_many_documents_is_a_file_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "MAX_DOCUMENTS_PER_FILE", 3)
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {{name: n{}}}\n"
    assert parse_text("---\n".join(ns.format(i) for i in range(3)), "f.yaml").ok
    result = parse_text("---\n".join(ns.format(i) for i in range(4)), "f.yaml")
    assert not result.ok and str(result.issues[0]) == "f.yaml: refused: more than 3 documents in one file"


def test_oversized_file_is_a_file_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 100)
    f = tmp_path / "big.yaml"
    f.write_text(SVC + "#" * 100)
    result = parse_file(f)
    assert not result.ok and "over the 100-byte manifest limit" in str(result.issues[0])


# -- webhook ---------------------------------------------------------------------------------------------------
def test_deep_admission_review_is_a_review_error() -> None:
    with pytest.raises(ReviewError, match=r"body is nested deeper than 102 levels \(at line 1 column 511\)"):
        _parse_review(DEEP_JSON.encode())
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "env": nested(99)}]}}
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u", "object": pod}}
    with pytest.raises(ReviewError, match="nested deeper"):
        _parse_review(json.dumps(review).encode())
    pod["spec"]["containers"][0]["env"] = nested(95)  # type: ignore[index]
    assert _parse_review(json.dumps(review).encode())["uid"] == "u"


# -- cilia inject -f -------------------------------------------------------------------------------------------
def test_inject_reads_within_the_same_limits() -> None:
    from cilia.mesh.inject import InjectConfig, InjectError, inject_yaml

    with pytest.raises(InjectError, match=r"input#0: spec\.l\d.*YAML aliases expand"):
        inject_yaml(laughs(), InjectConfig())
    with pytest.raises(InjectError, match=r"input#0: a\[0\]: refers to itself"):
        inject_yaml("a: &x [*x]\n", InjectConfig())
    with pytest.raises(yaml.YAMLError):
        inject_yaml("- " * 100_000 + "x\n", InjectConfig())
