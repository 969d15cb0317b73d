"""Mesh mode selection: precedence and validation, table-driven."""

from __future__ import annotations

import pytest

from cilia.mesh.mode import MESH_MODE_KEY, MeshMode, resolve_mesh_mode

K = MESH_MODE_KEY

# (case, ns labels, ns annotations, pod labels, pod annotations, default, expected)
CASES: list[tuple[str, dict[str, str] | None, dict[str, str] | None, dict[str, str] | None,
                  dict[str, str] | None, MeshMode, MeshMode]] = [
    ("nothing set -> default node", None, None, None, None, "node", "node"),
    ("nothing set -> default sidecar", {}, {}, {}, {}, "sidecar", "sidecar"),
    ("unrelated keys ignored", {"team": "a"}, {"x": "y"}, {"app": "web"}, {"note": "n"}, "off", "off"),
    ("namespace label", {K: "sidecar"}, None, None, None, "node", "sidecar"),
    ("namespace annotation", None, {K: "sidecar"}, None, None, "node", "sidecar"),
    ("ns annotation beats ns label", {K: "off"}, {K: "sidecar"}, None, None, "node", "sidecar"),
    ("pod label beats namespace", {K: "sidecar"}, {K: "sidecar"}, {K: "node"}, None, "sidecar", "node"),
    ("pod annotation beats pod label", None, None, {K: "sidecar"}, {K: "off"}, "node", "off"),
    ("pod annotation beats all", {K: "node"}, {K: "node"}, {K: "node"}, {K: "sidecar"}, "node", "sidecar"),
    ("pod opts out of sidecar namespace", {K: "sidecar"}, None, None, {K: "off"}, "node", "off"),
    ("pod opts in from off namespace", None, {K: "off"}, {K: "sidecar"}, None, "node", "sidecar"),
    ("stale lower value not checked", {K: "bogus"}, None, None, {K: "node"}, "node", "node"),
]


@pytest.mark.parametrize(
    ("ns_labels", "ns_annotations", "pod_labels", "pod_annotations", "default", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_resolve_mesh_mode(
    ns_labels: dict[str, str] | None,
    ns_annotations: dict[str, str] | None,
    pod_labels: dict[str, str] | None,
    pod_annotations: dict[str, str] | None,
    default: MeshMode,
    expected: MeshMode,
) -> None:
    got = resolve_mesh_mode(ns_labels, ns_annotations, pod_labels, pod_annotations, default)
    assert got == expected


# (case, ns labels, ns annotations, pod labels, pod annotations, fragments of the message)
BAD: list[tuple[str, dict[str, object] | None, dict[str, object] | None, dict[str, object] | None,
                dict[str, object] | None, tuple[str, ...]]] = [
    ("pod annotation", None, None, None, {K: "sidecars"},
     ("Pod shop/web annotation cilia.io/mesh", "'sidecars'", "node, sidecar, proxyless, off")),
    ("pod label", None, None, {K: "Sidecar"}, None, ("Pod shop/web label cilia.io/mesh", "'Sidecar'")),
    ("namespace annotation", None, {K: ""}, None, None, ("Namespace 'shop' annotation cilia.io/mesh", "''")),
    ("namespace label", {K: "istio"}, None, None, None, ("Namespace 'shop' label cilia.io/mesh", "'istio'")),
    ("yaml boolean", None, None, None, {K: False}, ("annotation cilia.io/mesh", "False", "quote it")),
]


@pytest.mark.parametrize(
    ("ns_labels", "ns_annotations", "pod_labels", "pod_annotations", "fragments"),
    [c[1:] for c in BAD],
    ids=[c[0] for c in BAD],
)
def test_invalid_mode_names_object_and_key(
    ns_labels: dict[str, str] | None,
    ns_annotations: dict[str, str] | None,
    pod_labels: dict[str, str] | None,
    pod_annotations: dict[str, str] | None,
    fragments: tuple[str, ...],
) -> None:
    with pytest.raises(ValueError) as info:
        resolve_mesh_mode(ns_labels, ns_annotations, pod_labels, pod_annotations, "node",
                          namespace="shop", pod_ref="Pod shop/web")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_invalid_default_is_rejected() -> None:
    with pytest.raises(ValueError, match="cluster default mesh mode"):
        resolve_mesh_mode(None, None, None, None, "ambient")  # type: ignore[arg-type]
