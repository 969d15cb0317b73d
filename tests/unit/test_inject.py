"""Sidecar injection: pure pod mutation, documents, JSON patch, and the `cilia inject` entry."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from cilia import __version__
from cilia.mesh.inject import (
    ANNOTATION_INJECTED,
    ANNOTATION_PROXY_ID,
    ANNOTATION_VERSION,
    BOOTSTRAP_CONTAINER,
    CONFIG_VOLUME,
    PROXY_CONTAINER,
    InjectConfig,
    InjectError,
    NamespaceMeta,
    Resources,
    inject_documents,
    inject_pod_spec,
    inject_yaml,
    is_injected,
    json_patch_for,
    run_inject_cli,
)

CFG = InjectConfig()
SIDECAR = {"cilia.io/mesh": "sidecar"}


def pod(annotations: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "shop"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}], **spec},
    }


def deployment(template_annotations: dict[str, str] | None = None, api: str = "apps/v1") -> dict[str, Any]:
    template: dict[str, Any] = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }
    if template_annotations is not None:
        template["metadata"]["annotations"] = template_annotations
    return {
        "apiVersion": api,
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template},
    }


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


# --- inject_pod_spec --------------------------------------------------------------------------


def test_native_sidecar_layout() -> None:
    src = pod(SIDECAR, initContainers=[{"name": "migrate", "image": "m:1"}])
    out = inject_pod_spec(src, "shop", None, None, CFG)
    init = out["spec"]["initContainers"]
    assert [c["name"] for c in init] == [BOOTSTRAP_CONTAINER, PROXY_CONTAINER, "migrate"]
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]
    boot, proxy = init[0], init[1]
    assert proxy["restartPolicy"] == "Always"
    assert "restartPolicy" not in boot
    assert proxy["image"] == "envoyproxy/envoy:v1.40.0"
    assert proxy["command"] == ["envoy"] and proxy["args"][:2] == ["-c", "/etc/cilia/envoy.yaml"]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 15000}
    assert boot["image"] == "ghcr.io/cilia/cilia:0.1.0"
    script = boot["args"][0]
    assert script.startswith("cilia bootstrap ")
    assert '--proxy "sidecar~${POD_NAMESPACE}/${POD_NAME}"' in script
    assert "--xds cilia.cilia-system.svc:18000" in script and "--admin-port 15000" in script
    assert script.endswith("-o yaml > /etc/cilia/envoy.yaml")
    env = by_name(boot["env"])
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for container in (boot, proxy):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["allowPrivilegeEscalation"] is False
        assert by_name(container["volumeMounts"])[CONFIG_VOLUME]["mountPath"] == "/etc/cilia"
    assert by_name(proxy["volumeMounts"])[CONFIG_VOLUME]["readOnly"] is True
    assert by_name(out["spec"]["volumes"])[CONFIG_VOLUME]["emptyDir"] == {"medium": "Memory"}
    names = {c["name"] for c in init + out["spec"]["containers"]}
    assert not any("iptables" in n or "init-net" in n for n in names)
    ann = out["metadata"]["annotations"]
    assert ann[ANNOTATION_INJECTED] == "true"
    assert ann[ANNOTATION_PROXY_ID] == "sidecar~shop/web"
    assert ann[ANNOTATION_VERSION] == __version__
    assert ann["cilia.io/mesh"] == "sidecar"


def test_legacy_sidecar_is_appended_to_containers() -> None:
    cfg = InjectConfig(native_sidecar=False)
    out = inject_pod_spec(pod(SIDECAR), "shop", None, None, cfg)
    assert [c["name"] for c in out["spec"]["initContainers"]] == [BOOTSTRAP_CONTAINER]
    assert [c["name"] for c in out["spec"]["containers"]] == ["app", PROXY_CONTAINER]
    assert "restartPolicy" not in out["spec"]["containers"][1]


def test_config_reaches_the_containers() -> None:
    cfg = InjectConfig(
        envoy_image="registry.example/envoy:x", cilia_image="registry.example/cilia:y",
        xds_address="cp.example.svc:19000", admin_port=15100, readiness_port=15021,
        proxy_resources=Resources(cpu_request="50m", memory_limit="300Mi"),
        bootstrap_extra_args=("--pod-ip", '"${POD_IP}"'), run_as_user=1337,
    )
    out = inject_pod_spec(pod(SIDECAR), "shop", None, None, cfg)
    boot, proxy = out["spec"]["initContainers"][:2]
    assert proxy["image"] == "registry.example/envoy:x" and boot["image"] == "registry.example/cilia:y"
    assert "--xds cp.example.svc:19000 --admin-port 15100 --pod-ip \"${POD_IP}\" -o yaml" in boot["args"][0]
    assert proxy["resources"] == {"requests": {"cpu": "50m"}, "limits": {"memory": "300Mi"}}
    assert proxy["readinessProbe"]["httpGet"]["port"] == 15021
    assert proxy["securityContext"]["runAsUser"] == 1337


def test_input_is_not_mutated_and_result_is_new() -> None:
    src = pod({"keep": "me", **SIDECAR})
    before = copy.deepcopy(src)
    out = inject_pod_spec(src, "shop", None, None, CFG)
    assert src == before
    assert out is not src and out["spec"]["containers"] is not src["spec"]["containers"]
    unchanged = inject_pod_spec(src, "shop", None, None, InjectConfig(default_mode="off"))
    assert unchanged is not src  # a copy even when nothing is injected


@pytest.mark.parametrize("mode", ["node", "off"])
def test_node_and_off_modes_inject_nothing(mode: str) -> None:
    src = pod({"cilia.io/mesh": mode})
    assert inject_pod_spec(src, "shop", {"cilia.io/mesh": "sidecar"}, None, CFG) == src


def test_namespace_selects_and_default_applies() -> None:
    src = pod()
    assert inject_pod_spec(src, "shop", None, None, CFG) == src  # default node
    assert is_injected(inject_pod_spec(src, "shop", {"cilia.io/mesh": "sidecar"}, None, CFG))
    assert is_injected(inject_pod_spec(src, "shop", None, None, InjectConfig(default_mode="sidecar")))


def test_idempotent() -> None:
    once = inject_pod_spec(pod(SIDECAR), "shop", None, None, CFG)
    assert inject_pod_spec(once, "shop", None, None, CFG) == once
    legacy = InjectConfig(native_sidecar=False)
    once_legacy = inject_pod_spec(pod(SIDECAR), "shop", None, None, legacy)
    assert inject_pod_spec(once_legacy, "shop", None, None, legacy) == once_legacy


def test_existing_proxy_container_counts_as_injected() -> None:
    src = pod(SIDECAR)
    src["spec"]["containers"].append({"name": PROXY_CONTAINER, "image": "envoy"})
    assert inject_pod_spec(src, "shop", None, None, CFG) == src


def test_host_network_pods_are_left_alone() -> None:
    src = pod(SIDECAR, hostNetwork=True)
    assert inject_pod_spec(src, "shop", None, None, CFG) == src


def test_unnamed_pod_gets_template_proxy_id() -> None:
    src = pod(SIDECAR)
    del src["metadata"]["name"]
    src["metadata"]["generateName"] = "web-"
    out = inject_pod_spec(src, "shop", None, None, CFG)
    assert out["metadata"]["annotations"][ANNOTATION_PROXY_ID] == "sidecar~shop/$(POD_NAME)"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda p: p["spec"].update(containers=[]), "Pod shop/web spec.containers is empty"),
        (lambda p: p["spec"].update(volumes=[{"name": CONFIG_VOLUME}]), f"volume named {CONFIG_VOLUME!r}"),
        (lambda p: p["spec"].update(initContainers=[{"name": BOOTSTRAP_CONTAINER}]),
         f"container named {BOOTSTRAP_CONTAINER!r}"),
        (lambda p: p["spec"].update(volumes={"x": 1}), "Pod shop/web spec.volumes must be a list"),
        (lambda p: p["metadata"]["annotations"].update({"cilia.io/mesh": "yes"}),
         "Pod shop/web annotation cilia.io/mesh: invalid value 'yes'"),
    ],
)
def test_malformed_pods_raise_clear_errors(mutate: Any, fragment: str) -> None:
    src = pod(dict(SIDECAR))
    mutate(src)
    with pytest.raises(InjectError) as info:
        inject_pod_spec(src, "shop", None, None, CFG)
    assert fragment in str(info.value)


# --- documents ----------------------------------------------------------------------------------


def test_workload_error_names_the_workload() -> None:
    with pytest.raises(InjectError, match=r"Deployment shop/web spec\.template annotation cilia\.io/mesh"):
        inject_documents([deployment({"cilia.io/mesh": "sidecarr"})], CFG, {})


def test_other_kinds_and_foreign_groups_pass_through() -> None:
    docs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}},
        deployment(SIDECAR, api="example.com/v1"),
        None,
        "text",
    ]
    assert inject_documents(docs, CFG, {}) == docs


def test_list_items_are_injected() -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": [pod(SIDECAR), deployment(SIDECAR)]}
    out = inject_documents([doc], CFG, {})[0]
    assert is_injected(out["items"][0])
    assert is_injected(out["items"][1]["spec"]["template"])
    assert not is_injected(out["items"][1])  # the Deployment's own metadata is untouched


def test_inject_yaml_namespace_documents_override_given_namespaces() -> None:
    text = yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        deployment(),
    ])
    given: dict[str, NamespaceMeta] = {"shop": ({"cilia.io/mesh": "sidecar"}, {})}
    # the Namespace document (no mode) replaces what the caller knew about `shop`
    assert "cilia-proxy" not in inject_yaml(text, CFG, given)
    assert "cilia-proxy" in inject_yaml(yaml.safe_dump(deployment()), CFG, given)


def test_inject_yaml_accepts_json() -> None:
    import json

    out = list(yaml.safe_load_all(inject_yaml(json.dumps(pod(SIDECAR)), CFG)))
    assert len(out) == 1 and is_injected(out[0])


# --- JSON patch ---------------------------------------------------------------------------------


def test_patch_ops_for_fresh_pod() -> None:
    src = pod()
    out = inject_pod_spec(src, "shop", None, None, InjectConfig(default_mode="sidecar"))
    ops = json_patch_for(src, out)
    assert {(op["op"], op["path"]) for op in ops} == {
        ("add", "/metadata/annotations"),
        ("add", "/spec/initContainers"),
        ("add", "/spec/volumes"),
    }
    assert jsonpatch.apply_patch(src, ops) == out


def test_patch_escapes_annotation_keys_and_inserts_in_place() -> None:
    src = pod({"a~b/c": "1", **SIDECAR}, initContainers=[{"name": "migrate"}], volumes=[{"name": "v"}])
    out = inject_pod_spec(src, "shop", None, None, CFG)
    ops = json_patch_for(src, out)
    paths = [op["path"] for op in ops]
    assert "/metadata/annotations/cilia.io~1injected" in paths
    assert "/metadata/annotations/cilia.io~1proxy-id" in paths
    assert "/metadata/annotations/cilia.io~1injected-by-version" in paths
    assert "/spec/initContainers/0" in paths and "/spec/initContainers/1" in paths
    assert "/spec/volumes/1" in paths
    assert all(op["op"] == "add" for op in ops)
    assert jsonpatch.apply_patch(src, ops) == out
    again = pod({"a~b/c": "1", **SIDECAR}, initContainers=[{"name": "migrate"}], volumes=[{"name": "v"}])
    assert src == again


def test_patch_is_empty_when_nothing_changes() -> None:
    src = pod({"cilia.io/mesh": "off"})
    assert json_patch_for(src, inject_pod_spec(src, "shop", None, None, CFG)) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 1, "b": [1, 2, 3]}, {"a": 2, "b": [1, 3], "c": None}),
        ({"a": [1, 2]}, {"a": [0, 1, 2, 9]}),
        ({"a": [1, 2, 3]}, {"a": [4, 5]}),
        ({"a": [{"x": 1}, {"y": 2}]}, {"a": [{"x": 1, "z": 3}, {"y": 2}]}),
        ({"a": True, "k/~": 1}, {"a": 1, "k/~": {"n": []}}),
        ({"a": None}, {"a": [1]}),
        ([1, 2], {"now": "object"}),
    ],
)
def test_patch_round_trips_general_changes(old: Any, new: Any) -> None:
    ops = json_patch_for(old, new)
    assert jsonpatch.apply_patch(copy.deepcopy(old), ops) == new
    assert type(jsonpatch.apply_patch(copy.deepcopy(old), ops)) is type(new)


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"admin_port": 0}, "InjectConfig.admin_port"),
        ({"inbound_port": 15001}, "must differ"),
        ({"default_mode": "ambient"}, "InjectConfig.default_mode"),
        ({"xds_address": "no-port"}, "InjectConfig.xds_address"),
        ({"readiness_port": 70000}, "InjectConfig.readiness_port"),
        ({"envoy_image": ""}, "InjectConfig.envoy_image"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        InjectConfig(**kwargs)


# --- cilia inject -f ------------------------------------------------------------------------------


def run(path: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_inject_cli(path, CFG, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_file(tmp_path: Path) -> None:
    text = yaml.safe_dump_all([pod(SIDECAR), deployment()])
    (tmp_path / "in.yaml").write_text(text)
    code, out, err = run(str(tmp_path / "in.yaml"))
    assert (code, err) == (0, "")
    assert out == inject_yaml(text, CFG)
    docs = list(yaml.safe_load_all(out))
    assert is_injected(docs[0]) and not is_injected(docs[1]["spec"]["template"])


def test_cli_directory_namespace_in_another_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "shop", "labels": {"cilia.io/mesh": "sidecar"}}}
    (tmp_path / "a-namespace.yaml").write_text(yaml.safe_dump(ns))
    (tmp_path / "sub" / "b-app.yml").write_text(yaml.safe_dump(deployment()))
    (tmp_path / "notes.txt").write_text("not: read")
    code, out, err = run(str(tmp_path))
    assert (code, err) == (0, "")
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Namespace", "Deployment"]
    assert is_injected(docs[1]["spec"]["template"])


def test_cli_errors(tmp_path: Path) -> None:
    code, out, err = run(str(tmp_path / "missing.yaml"))
    assert code == 1 and out == "" and "missing.yaml" in err
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    code, out, err = run(str(tmp_path / "bad.yaml"))
    assert code == 1 and out == "" and "bad.yaml: invalid YAML" in err
    (tmp_path / "mode.yaml").write_text(yaml.safe_dump(pod({"cilia.io/mesh": "maybe"})))
    code, out, err = run(str(tmp_path / "mode.yaml"))
    assert code == 1 and out == "" and "Pod shop/web annotation cilia.io/mesh" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(str(tmp_path / "empty"))
    assert code == 1 and "no *.yaml" in err
