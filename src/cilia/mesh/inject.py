"""Sidecar injection: pure functions shared by the admission webhook and `cilia inject`.

A pod whose mesh mode is `sidecar` gets:
- an init container `cilia-bootstrap` (cilia image) running `cilia bootstrap` for the proxy id
  `sidecar~NAMESPACE/POD` (from the downward API) into an emptyDir at `/etc/cilia/envoy.yaml`;
- the Envoy container `cilia-proxy` reading that file, readiness on Envoy's `/ready` admin path,
  running as a non-root user with no capabilities and a read-only root filesystem;
- annotations recording the injection.
There is no iptables init container: traffic is steered to the proxy by the eBPF agent.

A pod whose mesh mode is `proxyless` (gRPC applications whose gRPC library talks xDS itself) gets no
proxy at all:
- the same init container `cilia-bootstrap`, writing the gRPC xDS bootstrap for `grpc~NAMESPACE/POD`
  (`cilia bootstrap --grpc`) into an emptyDir at `/etc/cilia/grpc-bootstrap.json`;
- in every application container, that emptyDir mounted read-only at `/etc/cilia` and
  `GRPC_XDS_BOOTSTRAP` pointing at the file (a container that sets `GRPC_XDS_BOOTSTRAP` itself keeps
  its own value); clients then dial `xds:///NAME.NAMESPACE.svc.cluster.local:PORT`;
- with xDS over mTLS, the certificate step in the init container and the `cilia-cert` renewer (gRPC
  re-reads the files); both run as the application's user (the first container's `runAsUser`, else
  the pod's), so the application can read its private key.

By default the proxy is a Kubernetes native sidecar (an init container with `restartPolicy:
Always`, Kubernetes >= 1.29): it starts before the application containers and stops after them,
so Jobs and CronJobs still complete. `InjectConfig(native_sidecar=False)` appends it to
`containers` instead, for older clusters.

Everything here is pure: inputs are never mutated, outputs are new objects, and injecting an
already injected object returns an equal object.
"""

from __future__ import annotations

import copy
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from cilia import __version__
from cilia.errors import ValidationError
from cilia.mesh.mode import MeshMode, parse_mesh_mode, resolve_mesh_mode
from cilia.untrusted import AliasBudget, check_tree, load_yaml_documents

PROXY_CONTAINER = "cilia-proxy"
BOOTSTRAP_CONTAINER = "cilia-bootstrap"
CERT_CONTAINER = "cilia-cert"
TOKEN_VOLUME = "cilia-token"
TOKEN_DIR = "/var/run/secrets/cilia"
CONFIG_VOLUME = "cilia-envoy-config"
CONFIG_DIR = "/etc/cilia"
BOOTSTRAP_PATH = f"{CONFIG_DIR}/envoy.yaml"
TLS_DIR = f"{CONFIG_DIR}/tls"
GRPC_CONFIG_VOLUME = "cilia-grpc-config"
GRPC_BOOTSTRAP_PATH = f"{CONFIG_DIR}/grpc-bootstrap.json"
GRPC_BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP"

ANNOTATION_INJECTED = "cilia.io/injected"
ANNOTATION_PROXY_ID = "cilia.io/proxy-id"
ANNOTATION_VERSION = "cilia.io/injected-by-version"

# kind -> (API group, path from the object to its pod template)
WORKLOAD_TEMPLATES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "Deployment": ("apps", ("spec", "template")),
    "StatefulSet": ("apps", ("spec", "template")),
    "DaemonSet": ("apps", ("spec", "template")),
    "ReplicaSet": ("apps", ("spec", "template")),
    "ReplicationController": ("", ("spec", "template")),
    "Job": ("batch", ("spec", "template")),
    "CronJob": ("batch", ("spec", "jobTemplate", "spec", "template")),
}

NamespaceMeta = tuple[Mapping[str, str], Mapping[str, str]]
"""(labels, annotations) of a Namespace."""

_INPUT_SUFFIXES = (".yaml", ".yml", ".json")


class InjectError(ValueError):
    """An object cannot be injected as written (bad mode value, malformed pod spec)."""


@dataclass(frozen=True)
class Resources:
    """Container resource requests and limits; None leaves that entry out."""

    cpu_request: str | None = None
    memory_request: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None

    def to_k8s(self) -> dict[str, dict[str, str]]:
        """The `resources` stanza of a container."""
        out: dict[str, dict[str, str]] = {}
        requests = {k: v for k, v in (("cpu", self.cpu_request), ("memory", self.memory_request)) if v}
        limits = {k: v for k, v in (("cpu", self.cpu_limit), ("memory", self.memory_limit)) if v}
        if requests:
            out["requests"] = requests
        if limits:
            out["limits"] = limits
        return out


@dataclass(frozen=True)
class InjectConfig:
    """What the injected sidecar looks like; shared by the webhook and `cilia inject`."""

    envoy_image: str = "envoyproxy/envoy:v1.40.0"
    cilia_image: str = "ghcr.io/cilia/cilia:0.1.0"
    xds_address: str = "cilia.cilia-system.svc:18000"
    proxy_resources: Resources = Resources("100m", "128Mi", "2", "1Gi")
    bootstrap_resources: Resources = Resources("10m", "64Mi", "500m", "256Mi")
    admin_port: int = 15000
    outbound_port: int = 15001
    inbound_port: int = 15006
    # Port the kubelet probes for `/ready`; None means the admin port. The kubelet probes the pod
    # IP, so the bootstrap must serve `/ready` there (admin bound beyond loopback, or a static
    # readiness listener forwarding to admin) for the pod to become Ready.
    readiness_port: int | None = None
    default_mode: MeshMode = "node"
    fail_open: bool = False
    native_sidecar: bool = True
    # uid 101 is the `envoy` user of the Envoy image; the init step uses it too so the file it
    # writes into the emptyDir is owned by the same user.
    run_as_user: int = 101
    # Extra shell words appended to `cilia bootstrap` in the init step's `sh -c` script (operator
    # supplied, not quoted, so `"${POD_IP}"` expands), e.g. flags a newer bootstrap understands.
    bootstrap_extra_args: tuple[str, ...] = field(default_factory=tuple)
    # xDS over mTLS: the init step asks `cert_issuer` for the pod's certificate with a projected token
    # (audience cilia), a `cilia-cert` sidecar renews it, and Envoy's bootstrap points at the mTLS port.
    # `ca_bundle` (cilia's CA, PEM) lets the pod verify the issuer; the webhook fills it in.
    xds_tls: bool = False
    cert_issuer: str = "cilia.cilia-system.svc:18444"
    ca_bundle: str = ""

    def __post_init__(self) -> None:
        parse_mesh_mode(self.default_mode, "InjectConfig.default_mode")
        ports = {"admin_port": self.admin_port, "outbound_port": self.outbound_port,
                 "inbound_port": self.inbound_port}
        for name, port in ports.items():
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise ValueError(f"InjectConfig.{name}: {port!r} is not a port number (1-65535)")
        rp = self.readiness_port
        if rp is not None and (not isinstance(rp, int) or isinstance(rp, bool) or not 1 <= rp <= 65535):
            raise ValueError(f"InjectConfig.readiness_port: {rp!r} is not a port number (1-65535)")
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"InjectConfig: admin, outbound and inbound ports must differ, got {ports}")
        for name in ("envoy_image", "cilia_image", "xds_address"):
            if not getattr(self, name):
                raise ValueError(f"InjectConfig.{name} must not be empty")
        host, sep, port_text = self.xds_address.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"InjectConfig.xds_address: {self.xds_address!r} is not HOST:PORT")
        if not isinstance(self.bootstrap_extra_args, tuple):
            raise ValueError("InjectConfig.bootstrap_extra_args must be a tuple of strings")


# --- single pod / pod template ---------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InjectError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InjectError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _names(items: Iterable[Any]) -> set[str]:
    return {str(item.get("name")) for item in items if isinstance(item, dict)}


def is_injected(pod_or_template: Mapping[str, Any]) -> bool:
    """True when the object already carries the sidecar (annotation or proxy container)."""
    meta = pod_or_template.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(annotations, dict) and annotations.get(ANNOTATION_INJECTED) == "true":
        return True
    spec = pod_or_template.get("spec")
    if not isinstance(spec, dict):
        return False
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        if isinstance(items, list) and PROXY_CONTAINER in _names(items):
            return True
    return False


def proxy_id_for(namespace: str, pod_name: str | None, role: str = "sidecar") -> str:
    """The sidecar's Envoy node id (or, role `grpc`, the proxyless client's); a `$(POD_NAME)` template when
    the name is not known yet."""
    return f"{role}~{namespace}/{pod_name or '$(POD_NAME)'}"


def _downward_env() -> list[dict[str, Any]]:
    def field_env(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    return [
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        field_env("NODE_NAME", "spec.nodeName"),
    ]


def _security_context(cfg: InjectConfig, user: tuple[int, int] | None = None) -> dict[str, Any]:
    uid, gid = user or (cfg.run_as_user, cfg.run_as_user)
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _cert_command(cfg: InjectConfig, *extra: str, role: str = "sidecar") -> str:
    return " ".join([
        "cilia cert --kubernetes",
        f'--proxy "{role}~${{POD_NAMESPACE}}/${{POD_NAME}}"',
        f"--issuer {shlex.quote(cfg.cert_issuer)}",
        f"--token-file {TOKEN_DIR}/token",
        f"--out {TLS_DIR}",
        *extra,
    ])


def _tls_env(cfg: InjectConfig) -> list[dict[str, Any]]:
    return [{"name": "CILIA_CA_BUNDLE", "value": cfg.ca_bundle}] if cfg.xds_tls else []


def _tls_mounts(cfg: InjectConfig) -> list[dict[str, Any]]:
    return [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}] if cfg.xds_tls else []


def _init_container(cfg: InjectConfig, bootstrap_words: list[str], role: str, volume: str,
                    user: tuple[int, int] | None = None) -> dict[str, Any]:
    """The init step: (with mTLS, the first certificate, then) `cilia bootstrap ...` into `volume`."""
    command = " ".join([*bootstrap_words[:-1], *([f"--tls-dir {TLS_DIR}"] if cfg.xds_tls else []),
                        *cfg.bootstrap_extra_args, bootstrap_words[-1]])
    if cfg.xds_tls:
        command = f"{_cert_command(cfg, role=role)} && {command}"
    return {
        "name": BOOTSTRAP_CONTAINER,
        "image": cfg.cilia_image,
        "command": ["sh", "-c"],
        "args": [command],
        "env": [*_downward_env(), *_tls_env(cfg)],
        "resources": cfg.bootstrap_resources.to_k8s(),
        "volumeMounts": [{"name": volume, "mountPath": CONFIG_DIR}, *_tls_mounts(cfg)],
        "securityContext": _security_context(cfg, user),
    }


def _renewer_container(cfg: InjectConfig, role: str, volume: str,
                       user: tuple[int, int] | None = None) -> dict[str, Any]:
    """Native sidecar renewing the pod's xDS certificate at 2/3 of its life (the client watches the files)."""
    return {
        "name": CERT_CONTAINER,
        "image": cfg.cilia_image,
        "command": ["sh", "-c"],
        "args": [_cert_command(cfg, "--renew", role=role)],
        "env": [*_downward_env(), *_tls_env(cfg)],
        "resources": Resources("5m", "32Mi", "100m", "128Mi").to_k8s(),
        "volumeMounts": [{"name": volume, "mountPath": CONFIG_DIR}, *_tls_mounts(cfg)],
        "securityContext": _security_context(cfg, user),
        "restartPolicy": "Always",
    }


def _grpc_bootstrap_container(cfg: InjectConfig, user: tuple[int, int] | None) -> dict[str, Any]:
    """Init container writing the proxyless gRPC client's xDS bootstrap (and, with mTLS, its certificate)."""
    return _init_container(cfg, ["cilia bootstrap --grpc", '--proxy "grpc~${POD_NAMESPACE}/${POD_NAME}"',
                                 f"--xds {shlex.quote(cfg.xds_address)}", f"-o json > {GRPC_BOOTSTRAP_PATH}"],
                           "grpc", GRPC_CONFIG_VOLUME, user)


def _grpc_cert_renewer(cfg: InjectConfig, user: tuple[int, int] | None) -> dict[str, Any]:
    return _renewer_container(cfg, "grpc", GRPC_CONFIG_VOLUME, user)


def _app_user(spec: Mapping[str, Any], containers: list[Any]) -> tuple[int, int] | None:
    """(uid, gid) the application runs as: its first container's security context, else the pod's."""
    pod_ctx = spec.get("securityContext")
    pod_ctx = pod_ctx if isinstance(pod_ctx, dict) else {}
    first = containers[0] if containers and isinstance(containers[0], dict) else {}
    ctx = first.get("securityContext")
    ctx = ctx if isinstance(ctx, dict) else {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", uid))
    if isinstance(uid, int) and not isinstance(uid, bool) and uid > 0 and isinstance(gid, int):
        return uid, gid
    return None


def _with_grpc_bootstrap(container: Any, where: str) -> Any:
    """An application container that reads the bootstrap: the volume mounted, GRPC_XDS_BOOTSTRAP set."""
    if not isinstance(container, dict):
        raise InjectError(f"{where} must be a mapping, got {type(container).__name__}")
    out = dict(container)
    env = _list(out.get("env"), f"{where}.env")
    if GRPC_BOOTSTRAP_ENV not in _names(env):
        out["env"] = [*env, {"name": GRPC_BOOTSTRAP_ENV, "value": GRPC_BOOTSTRAP_PATH}]
    mounts = _list(out.get("volumeMounts"), f"{where}.volumeMounts")
    if any(isinstance(m, dict) and m.get("mountPath") == CONFIG_DIR for m in mounts):
        raise InjectError(f"{where} already mounts something at {CONFIG_DIR}")
    out["volumeMounts"] = [*mounts, {"name": GRPC_CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}]
    return out


def _inject_proxyless(out: dict[str, Any], meta: dict[str, Any], spec: dict[str, Any], namespace: str,
                      name: str | None, label: str, annotations: dict[str, Any], cfg: InjectConfig) -> dict[str, Any]:
    containers = _list(spec.get("containers"), f"{label} spec.containers")
    if not containers:
        raise InjectError(f"{label} spec.containers is empty: no gRPC application to configure")
    init = _list(spec.get("initContainers"), f"{label} spec.initContainers")
    volumes = _list(spec.get("volumes"), f"{label} spec.volumes")
    if BOOTSTRAP_CONTAINER in _names(containers) | _names(init):
        raise InjectError(f"{label} already has a container named {BOOTSTRAP_CONTAINER!r}")
    if GRPC_CONFIG_VOLUME in _names(volumes):
        raise InjectError(f"{label} already has a volume named {GRPC_CONFIG_VOLUME!r}")
    user = _app_user(spec, containers)
    renewer = [_grpc_cert_renewer(cfg, user)] if cfg.xds_tls else []
    spec["containers"] = [_with_grpc_bootstrap(c, f"{label} spec.containers[{i}]") for i, c in enumerate(containers)]
    if cfg.native_sidecar:
        spec["initContainers"] = [_grpc_bootstrap_container(cfg, user), *renewer, *init]
    else:
        spec["initContainers"] = [_grpc_bootstrap_container(cfg, user), *init]
        spec["containers"] += [{k: v for k, v in c.items() if k != "restartPolicy"} for c in renewer]
    spec["volumes"] = [*volumes, {"name": GRPC_CONFIG_VOLUME, "emptyDir": {"medium": "Memory"}},
                       *([token_volume()] if cfg.xds_tls else [])]
    meta["annotations"] = {
        **annotations,
        ANNOTATION_INJECTED: "true",
        ANNOTATION_PROXY_ID: proxy_id_for(namespace, name, "grpc"),
        ANNOTATION_VERSION: __version__,
    }
    out["metadata"] = meta
    return out


def bootstrap_container(cfg: InjectConfig) -> dict[str, Any]:
    """Init container writing the Envoy bootstrap for this pod's proxy id into the emptyDir (and, with
    mTLS, the pod's first certificate)."""
    return _init_container(cfg, ["cilia bootstrap", '--proxy "sidecar~${POD_NAMESPACE}/${POD_NAME}"',
                                 f"--xds {shlex.quote(cfg.xds_address)}", f"--admin-port {cfg.admin_port}",
                                 f"-o yaml > {BOOTSTRAP_PATH}"], "sidecar", CONFIG_VOLUME)


def cert_renewer_container(cfg: InjectConfig) -> dict[str, Any]:
    """Native sidecar renewing the pod's xDS certificate at 2/3 of its life (Envoy watches the files)."""
    return _renewer_container(cfg, "sidecar", CONFIG_VOLUME)


def token_volume() -> dict[str, Any]:
    """A projected ServiceAccount token for audience `cilia`: the pod's proof of identity to the issuer."""
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": "cilia", "expirationSeconds": 3600, "path": "token"}}]}}


def proxy_container(cfg: InjectConfig) -> dict[str, Any]:
    """The Envoy sidecar container (native sidecar form when `cfg.native_sidecar`)."""
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": cfg.envoy_image,
        "command": ["envoy"],
        "args": ["-c", BOOTSTRAP_PATH, "--disable-hot-restart"],
        "ports": [
            {"name": "cilia-admin", "containerPort": cfg.admin_port, "protocol": "TCP"},
            {"name": "cilia-outbound", "containerPort": cfg.outbound_port, "protocol": "TCP"},
            {"name": "cilia-inbound", "containerPort": cfg.inbound_port, "protocol": "TCP"},
        ],
        "resources": cfg.proxy_resources.to_k8s(),
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": cfg.readiness_port or cfg.admin_port},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "securityContext": _security_context(cfg),
    }
    if cfg.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def config_volume() -> dict[str, Any]:
    """The emptyDir shared by the bootstrap step and the proxy (memory-backed: it is tiny)."""
    return {"name": CONFIG_VOLUME, "emptyDir": {"medium": "Memory"}}


def inject_pod_spec(
    pod_template_or_pod: Mapping[str, Any],
    namespace: str,
    ns_labels: Mapping[str, str] | None,
    ns_annotations: Mapping[str, str] | None,
    cfg: InjectConfig,
    *,
    where: str | None = None,
) -> dict[str, Any]:
    """Return a copy of a Pod (or pod template: `{metadata, spec}`) with the sidecar added (mode `sidecar`)
    or the gRPC xDS bootstrap (mode `proxyless`).

    Unchanged copy when the mesh mode is `node` or `off`, when the object is already injected,
    or for `hostNetwork` pods (a proxy there would take the node's ports). `where` names the
    object in error messages. Raises InjectError for a bad mode value or malformed spec.
    """
    out: dict[str, Any] = copy.deepcopy(dict(pod_template_or_pod))
    meta = _mapping(out.get("metadata"), f"{where or 'pod'} metadata")
    name = meta.get("name") if isinstance(meta.get("name"), str) else None
    label = where or f"Pod {namespace}/{name or meta.get('generateName') or '<unnamed>'}"
    labels = _mapping(meta.get("labels"), f"{label} metadata.labels")
    annotations = _mapping(meta.get("annotations"), f"{label} metadata.annotations")
    try:
        mode = resolve_mesh_mode(
            ns_labels, ns_annotations, labels, annotations, cfg.default_mode,
            namespace=namespace, pod_ref=label,
        )
    except ValueError as exc:
        raise InjectError(str(exc)) from exc
    if mode not in ("sidecar", "proxyless") or is_injected(out):
        return out
    spec = out.get("spec")
    if not isinstance(spec, dict):
        raise InjectError(f"{label} spec must be a mapping, got {type(spec).__name__}")
    if mode == "proxyless":
        return _inject_proxyless(out, meta, spec, namespace, name, label, annotations, cfg)
    if spec.get("hostNetwork") is True:
        return out
    containers = _list(spec.get("containers"), f"{label} spec.containers")
    if not containers:
        raise InjectError(f"{label} spec.containers is empty: nothing to put a sidecar next to")
    init = _list(spec.get("initContainers"), f"{label} spec.initContainers")
    volumes = _list(spec.get("volumes"), f"{label} spec.volumes")
    if BOOTSTRAP_CONTAINER in _names(containers) | _names(init):
        raise InjectError(f"{label} already has a container named {BOOTSTRAP_CONTAINER!r}")
    if CONFIG_VOLUME in _names(volumes):
        raise InjectError(f"{label} already has a volume named {CONFIG_VOLUME!r}")

    proxy = proxy_container(cfg)
    renewer = [cert_renewer_container(cfg)] if cfg.xds_tls else []
    if cfg.native_sidecar:
        spec["initContainers"] = [bootstrap_container(cfg), *renewer, proxy, *init]
    else:
        spec["initContainers"] = [bootstrap_container(cfg), *init]
        spec["containers"] = [*containers, proxy, *[{k: v for k, v in c.items() if k != "restartPolicy"}
                                                    for c in renewer]]
    spec["volumes"] = [*volumes, config_volume(), *([token_volume()] if cfg.xds_tls else [])]
    meta["annotations"] = {
        **annotations,
        ANNOTATION_INJECTED: "true",
        ANNOTATION_PROXY_ID: proxy_id_for(namespace, name),
        ANNOTATION_VERSION: __version__,
    }
    out["metadata"] = meta
    return out


# --- documents ------------------------------------------------------------------------------


def _api_group(api_version: Any) -> str | None:
    if not isinstance(api_version, str):
        return None
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def _object_ref(doc: Mapping[str, Any], namespace: str) -> str:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{doc.get('kind')} {namespace}/{name or '<unnamed>'}"


def _doc_namespace(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata")
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    return ns if isinstance(ns, str) and ns else "default"


def _inject_one(doc: Any, cfg: InjectConfig, namespaces: Mapping[str, NamespaceMeta]) -> Any:
    if not isinstance(doc, dict):
        return copy.deepcopy(doc)
    kind = doc.get("kind")
    group = _api_group(doc.get("apiVersion"))
    if kind == "List" and isinstance(doc.get("items"), list):
        out = copy.deepcopy(doc)
        out["items"] = [_inject_one(item, cfg, namespaces) for item in doc["items"]]
        return out
    namespace = _doc_namespace(doc)
    ns_labels, ns_annotations = namespaces.get(namespace, ({}, {}))
    ref = _object_ref(doc, namespace)
    if kind == "Pod" and group in ("", None):
        return inject_pod_spec(doc, namespace, ns_labels, ns_annotations, cfg, where=ref)
    if not isinstance(kind, str) or kind not in WORKLOAD_TEMPLATES:
        return copy.deepcopy(doc)
    want_group, path = WORKLOAD_TEMPLATES[kind]
    if group is not None and group != want_group:
        return copy.deepcopy(doc)
    out = copy.deepcopy(doc)
    parent: dict[str, Any] = out
    for i, key in enumerate(path[:-1]):
        child = parent.get(key)
        if not isinstance(child, dict):
            raise InjectError(f"{ref}: {'.'.join(path[: i + 1])} must be a mapping")
        parent = child
    template = parent.get(path[-1])
    if not isinstance(template, dict):
        raise InjectError(f"{ref}: {'.'.join(path)} must be a mapping")
    parent[path[-1]] = inject_pod_spec(
        template, namespace, ns_labels, ns_annotations, cfg, where=f"{ref} {'.'.join(path)}"
    )
    return out


def inject_documents(
    docs: Sequence[Any], cfg: InjectConfig, namespaces: Mapping[str, NamespaceMeta]
) -> list[Any]:
    """Inject every Pod and workload pod template in `docs`; other kinds pass through unchanged.

    `namespaces` maps a namespace name to its (labels, annotations); a missing namespace has
    neither. Objects without `metadata.namespace` are in `default`, as kubectl assumes.
    """
    return [_inject_one(doc, cfg, namespaces) for doc in docs]


def namespaces_from_documents(docs: Iterable[Any]) -> dict[str, NamespaceMeta]:
    """(labels, annotations) of every Namespace object among `docs`."""
    found: dict[str, NamespaceMeta] = {}
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Namespace":
            continue
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            continue
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        found[meta["name"]] = (labels or {}, annotations or {})
    return found


def dump_yaml(docs: Iterable[Any]) -> str:
    """Multi-document YAML, key order kept, long strings unfolded."""
    return yaml.safe_dump_all(
        list(docs), sort_keys=False, default_flow_style=False, explicit_start=True, width=4096
    )


def load_documents(text: str, where: str = "input") -> list[Any]:
    """The non-empty documents of a YAML (or JSON) stream, within cilia's input limits (depth, YAML
    aliases, string keys: see cilia.untrusted). Raises yaml.YAMLError, or InjectError naming the field."""
    docs: list[Any] = []
    budget = AliasBudget()
    for index, doc in load_yaml_documents(text):
        try:
            check_tree(doc, aliases=budget)
        except ValidationError as exc:
            raise InjectError(f"{where}#{index}: {exc}") from None
        docs.append(doc)
    return docs


def inject_yaml(
    text: str, cfg: InjectConfig, namespaces: Mapping[str, NamespaceMeta] | None = None
) -> str:
    """Multi-document YAML (or JSON) in, the same documents with sidecars added out.

    Namespace documents in the input take precedence over `namespaces` for mode selection.
    Empty documents are dropped. Raises InjectError or yaml.YAMLError.
    """
    docs = load_documents(text)
    known = {**(namespaces or {}), **namespaces_from_documents(docs)}
    return dump_yaml(inject_documents(docs, cfg, known))


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _INPUT_SUFFIXES)
    return [path]


def run_inject_cli(
    path: str, cfg: InjectConfig, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """`cilia inject -f PATH`: print the injected documents as YAML; 0 on success, 1 on error.

    PATH is a file, a directory (recursively `*.yaml`, `*.yml`, `*.json`) or `-` for stdin.
    Namespace documents anywhere in the input inform the mesh mode of the others.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    docs: list[Any] = []
    try:
        if path == "-":
            docs.extend(load_documents(sys.stdin.read(), "stdin"))
        else:
            files = _input_files(Path(path))
            if not files:
                print(f"cilia inject: no *.yaml, *.yml or *.json files under {path}", file=err)
                return 1
            for file in files:
                try:
                    text = file.read_text(encoding="utf-8")
                    docs.extend(load_documents(text, str(file)))
                except yaml.YAMLError as exc:
                    print(f"cilia inject: {file}: invalid YAML: {exc}", file=err)
                    return 1
        result = inject_documents(docs, cfg, namespaces_from_documents(docs))
    except OSError as exc:
        print(f"cilia inject: cannot read {exc.filename or path}: {exc.strerror or exc}", file=err)
        return 1
    except yaml.YAMLError as exc:
        print(f"cilia inject: {path}: invalid YAML: {exc}", file=err)
        return 1
    except InjectError as exc:
        print(f"cilia inject: {exc}", file=err)
        return 1
    out.write(dump_yaml(result))
    return 0


# --- JSON patch -----------------------------------------------------------------------------


def _escape(token: str) -> str:
    """RFC 6901 reference token escaping: `~` -> `~0`, `/` -> `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def _diff(old: Any, new: Any, path: str, ops: list[dict[str, Any]]) -> None:
    if type(old) is type(new) and old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_escape(str(key))}"})
        for key, value in new.items():
            child = f"{path}/{_escape(str(key))}"
            if key in old:
                _diff(old[key], value, child, ops)
            else:
                ops.append({"op": "add", "path": child, "value": copy.deepcopy(value)})
        return
    if isinstance(old, list) and isinstance(new, list):
        _diff_list(old, new, path, ops)
        return
    ops.append({"op": "replace", "path": path, "value": copy.deepcopy(new)})


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _diff_list(old: list[Any], new: list[Any], path: str, ops: list[dict[str, Any]]) -> None:
    prefix = 0
    limit = min(len(old), len(new))
    while prefix < limit and _same(old[prefix], new[prefix]):
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and _same(old[-1 - suffix], new[-1 - suffix]):
        suffix += 1
    old_mid = old[prefix : len(old) - suffix]
    new_mid = new[prefix : len(new) - suffix]
    if not old_mid:  # pure insertion
        for i, item in enumerate(new_mid):
            ops.append({"op": "add", "path": f"{path}/{prefix + i}", "value": copy.deepcopy(item)})
    elif not new_mid:  # pure removal
        ops.extend({"op": "remove", "path": f"{path}/{prefix}"} for _ in old_mid)
    elif len(old_mid) == len(new_mid):
        for i, (a, b) in enumerate(zip(old_mid, new_mid, strict=True)):
            _diff(a, b, f"{path}/{prefix + i}", ops)
    else:
        ops.append({"op": "replace", "path": path, "value": copy.deepcopy(new)})


def json_patch_for(original_pod: Any, mutated_pod: Any) -> list[dict[str, Any]]:
    """RFC 6902 operations turning `original_pod` into `mutated_pod` (empty when equal).

    Insertions into lists become `add` at an index, new keys `add` (annotation keys escaped, e.g.
    `cilia.io~1injected`), so the patch leaves fields it does not know about untouched.
    """
    ops: list[dict[str, Any]] = []
    _diff(original_pod, mutated_pod, "", ops)
    return ops
