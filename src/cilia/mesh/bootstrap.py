"""Envoy bootstrap for each proxy role: admin on loopback, everything else over ADS from cilia.

Per role, the bootstrap carries:
- `node.id` = `ROLE~NAME` (DESIGN §4), `node.cluster` = `cilia-ROLE`, and `node.metadata` with the
  role, the name and its parts (namespace, pod, gateway, ingress class), the pod IP (`--pod-ip`,
  else `$POD_IP`), the node name (`--node-name`, else `$NODE_NAME`; the NAME itself for `node`);
- stats tags with fixed values naming the proxy, so metrics from many proxies stay apart:
  `cilia_role`, `cilia_proxy`, and `cilia_node` (node), `cilia_namespace` + `cilia_pod` (sidecar),
  `cilia_namespace` + `cilia_gateway` (gateway), `cilia_ingress_class` (ingress);
- for node proxies: the static clusters Cilium's node Envoy has, which Cilium's CiliumEnvoyConfigs
  route to: `/envoy-admin` (this Envoy's own admin endpoint) and the original-destination passthrough
  clusters `egress-cluster`, `ingress-cluster` (plain) and `egress-cluster-tls`, `ingress-cluster-tls`
  (originating TLS to the original destination, SNI from the request's host);
- for sidecars with a known pod IP: a static listener `cilia|readiness` on POD_IP:READINESS_PORT
  (default: the admin port) that answers only `GET /ready` by asking the admin endpoint. The kubelet
  probes the pod IP, while admin stays on loopback; the injected sidecar's readiness probe is
  `/ready` on the admin port, so with the defaults the two meet. Other roles get it only when a
  readiness port is given explicitly.

A proxyless gRPC client (`grpc~NAMESPACE/POD`) gets a gRPC xDS bootstrap instead (`grpc_bootstrap_config`,
the JSON file `GRPC_XDS_BOOTSTRAP` names): one xDS server (cilia, State-of-the-World ADS, which is what
gRPC speaks), the same node id and metadata, and plaintext or mTLS channel credentials.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from cilia import __version__
from cilia.identity import ProxyId
from cilia.ir.model import NODE_ADMIN_CLUSTER, NODE_PASSTHROUGH_CLUSTERS

XDS_CLUSTER = "cilia-xds"
ADMIN_CLUSTER = "cilia-admin"
READINESS_LISTENER = "cilia|readiness"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--xds must be HOST:PORT, got {value!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"--xds port must be 1-65535, got {port}")
    return host.strip("[]"), int(port)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _shadows_admin(address: str, port: int, admin_port: int) -> bool:
    """A readiness listener there would collide with admin itself (which then answers /ready anyway)."""
    ip = ipaddress.ip_address(address)
    return port == admin_port and (ip.is_unspecified or str(ip) == "127.0.0.1")


def _check_port(value: int, what: str) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} must be 1-65535, got {value}")
    return value


def proxy_metadata(proxy: ProxyId, pod_ip: str, node_name: str) -> dict[str, str]:
    """`node.metadata`: who this proxy is, in the words of each role."""
    md: dict[str, str] = {"role": proxy.role, "cilia.io/proxy-name": proxy.name, "cilia.io/version": __version__}
    if proxy.namespace:
        md["namespace"] = proxy.namespace
    if proxy.role in ("sidecar", "grpc"):
        md["pod_name"] = proxy.short_name
    elif proxy.role == "gateway":
        md["gateway"] = proxy.short_name
    elif proxy.role == "ingress":
        md["ingress_class"] = proxy.name
    if proxy.role == "node":
        md["node_name"] = proxy.name
    elif node_name:
        md["node_name"] = node_name
    if pod_ip:
        md["pod_ip"] = pod_ip
    return md


def stats_tags(proxy: ProxyId) -> list[dict[str, str]]:
    """Fixed-value tags added to every stat of this proxy."""
    tags = [("cilia_role", proxy.role), ("cilia_proxy", proxy.name)]
    if proxy.role == "node":
        tags.append(("cilia_node", proxy.name))
    elif proxy.role in ("sidecar", "grpc"):
        tags += [("cilia_namespace", proxy.namespace), ("cilia_pod", proxy.short_name)]
    elif proxy.role == "gateway":
        tags += [("cilia_namespace", proxy.namespace), ("cilia_gateway", proxy.short_name)]
    elif proxy.role == "ingress":
        tags.append(("cilia_ingress_class", proxy.name))
    return [{"tag_name": name, "fixed_value": value} for name, value in tags]


def _static_cluster(name: str, host: str, port: int, *, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}}},
            },
        }
    return cluster


HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _passthrough_cluster(name: str, tls: bool) -> dict[str, Any]:
    """An ORIGINAL_DST cluster: each connection goes where the client meant it to go (as Cilium's)."""
    options: dict[str, Any] = {"@type": "type.googleapis.com/" + HTTP_OPTIONS,
                               "common_http_protocol_options": {"idle_timeout": "60s"},
                               "use_downstream_protocol_config": {}}
    cluster: dict[str, Any] = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
        "cleanup_interval": "2.5s",
        "typed_extension_protocol_options": {HTTP_OPTIONS: options},
    }
    if tls:
        options["upstream_http_protocol_options"] = {"auto_sni": True}
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                       "typed_config": {"@type": UPSTREAM_TLS_TYPE}}
    return cluster


def cilium_node_clusters(admin_port: int) -> list[dict[str, Any]]:
    """The static clusters of Cilium's node Envoy that CiliumEnvoyConfigs refer to by name."""
    return [_static_cluster(NODE_ADMIN_CLUSTER, "127.0.0.1", admin_port),
            *(_passthrough_cluster(n, n.endswith("-tls")) for n in NODE_PASSTHROUGH_CLUSTERS)]


def readiness_listener(address: str, port: int) -> dict[str, Any]:
    """`GET /ready` on ADDRESS:PORT answered by the admin endpoint; everything else 404."""
    return {
        "name": READINESS_LISTENER,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": "cilia_readiness",
                "codec_type": "AUTO",
                "route_config": {
                    "name": READINESS_LISTENER,
                    "virtual_hosts": [{
                        "name": "readiness",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"path": "/ready", "headers": [
                                {"name": ":method", "string_match": {"exact": "GET"}}]},
                             "route": {"cluster": ADMIN_CLUSTER, "timeout": "2s"}},
                            {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                        ],
                    }],
                },
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
            },
        }]}],
    }


SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
XDS_CLIENT_SECRET = "cilia-xds-client"
XDS_CA_SECRET = "cilia-xds-ca"
SDS_CERT_FILE = "sds-cert.yaml"
SDS_CA_FILE = "sds-ca.yaml"


def sds_files(tls_dir: str) -> dict[str, str]:
    """The file-based SDS resources a `--tls-dir` holds beside cert.pem, key.pem and ca.pem. Envoy watches
    the directory, so a renewed certificate (files replaced atomically) is used for the next connection
    without a restart."""
    import json

    d = os.path.abspath(tls_dir)
    cert = {"resources": [{"@type": SECRET_TYPE, "name": XDS_CLIENT_SECRET, "tls_certificate": {
        "certificate_chain": {"filename": f"{d}/cert.pem"}, "private_key": {"filename": f"{d}/key.pem"},
        "watched_directory": {"path": d}}}]}
    ca = {"resources": [{"@type": SECRET_TYPE, "name": XDS_CA_SECRET, "validation_context": {
        "trusted_ca": {"filename": f"{d}/ca.pem"}, "watched_directory": {"path": d}}}]}
    return {SDS_CERT_FILE: json.dumps(cert, indent=1) + "\n", SDS_CA_FILE: json.dumps(ca, indent=1) + "\n"}


def xds_tls_socket(tls_dir: str, trust_domain: str) -> dict[str, Any]:
    """mTLS to cilia: our certificate from the directory, the server verified as `spiffe://TD/cilia/xds`."""
    d = os.path.abspath(tls_dir)

    def source(file: str) -> dict[str, Any]:
        return {"path_config_source": {"path": f"{d}/{file}", "watched_directory": {"path": d}},
                "resource_api_version": "V3"}

    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [{"name": XDS_CLIENT_SECRET, "sds_config": source(SDS_CERT_FILE)}],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": f"spiffe://{trust_domain}/cilia/xds"}}]},
                "validation_context_sds_secret_config": {"name": XDS_CA_SECRET, "sds_config": source(SDS_CA_FILE)},
            },
        },
    }}


def write_tls_dir(out: str, cert_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> None:
    """A proxy's credential directory: cert.pem, key.pem (0600), ca.pem and the SDS files naming them."""
    from pathlib import Path

    from cilia.security.ca import write_credentials, write_file

    write_credentials(out, cert_pem, key_pem, bundle_pem)
    for name, text in sds_files(out).items():
        write_file(Path(out) / name, text.encode())


def trust_domain_of_dir(tls_dir: str) -> str | None:
    """The trust domain named by the certificate in `tls_dir` (None when there is none yet)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(open(os.path.join(tls_dir, "cert.pem"), "rb").read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://"):].split("/", 1)[0]
    return None


def bootstrap_config(proxy: ProxyId, xds: str = "127.0.0.1:18000", admin_port: int = 19901, delta: bool = True,
                     pod_ip: str | None = None, extra_metadata: dict[str, str] | None = None, *,
                     node_name: str | None = None, readiness_port: int | None = None,
                     env: Mapping[str, str] | None = None, tls_dir: str | None = None,
                     trust_domain: str | None = None) -> dict[str, Any]:
    """A bootstrap as a plain dict (YAML/JSON-ready).

    `pod_ip` and `node_name` default to $POD_IP and $NODE_NAME (`env`, default the process
    environment), as the injected bootstrap step sets them from the downward API.
    """
    env = os.environ if env is None else env
    host, port = _split_hostport(xds)
    _check_port(admin_port, "--admin-port")
    pod_ip = (pod_ip if pod_ip is not None else env.get("POD_IP", "")).strip()
    if pod_ip and not _is_ip(pod_ip):
        raise ValueError(f"pod IP {pod_ip!r} is not an IP address")
    node_name = node_name if node_name is not None else env.get("NODE_NAME", "")
    metadata = proxy_metadata(proxy, pod_ip, node_name)
    metadata.update(extra_metadata or {})
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    clusters = [_static_cluster(XDS_CLUSTER, host, port, http2=True)]
    if tls_dir is not None:
        td = trust_domain or trust_domain_of_dir(tls_dir) or "cluster.local"
        clusters[0]["transport_socket"] = xds_tls_socket(tls_dir, td)
    listeners: list[dict[str, Any]] = []
    if readiness_port is not None:
        _check_port(readiness_port, "--readiness-port")
    ready_port = readiness_port or admin_port
    wanted = proxy.role == "sidecar" or readiness_port is not None
    if pod_ip and wanted and not _shadows_admin(pod_ip, ready_port, admin_port):
        listeners.append(readiness_listener(pod_ip, ready_port))
        clusters.append(_static_cluster(ADMIN_CLUSTER, "127.0.0.1", admin_port))
    if proxy.role == "node":
        clusters.extend(cilium_node_clusters(admin_port))
    static: dict[str, Any] = {"clusters": clusters}
    if listeners:
        static["listeners"] = listeners
    return {
        "node": {
            "id": str(proxy),
            "cluster": f"cilia-{proxy.role}",
            "metadata": metadata,
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": static,
        "stats_config": {"stats_tags": stats_tags(proxy)},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "overload.global_downstream_max_connections": 50000}}]},
    }


GRPC_CERT_REFRESH = "60s"  # how often gRPC re-reads the certificate files (renewals replace them)


def grpc_bootstrap_config(proxy: ProxyId, xds: str = "127.0.0.1:18000", *, pod_ip: str | None = None,
                          node_name: str | None = None, env: Mapping[str, str] | None = None,
                          tls_dir: str | None = None) -> dict[str, Any]:
    """The xDS bootstrap of a proxyless gRPC client (`GRPC_XDS_BOOTSTRAP`), as a plain dict (JSON-ready).

    With `tls_dir` (cert.pem, key.pem, ca.pem from `cilia cert`) the client speaks mTLS to cilia and
    re-reads the files every GRPC_CERT_REFRESH, so renewed certificates are picked up; gRPC checks the
    server's certificate against the host in `xds`.
    """
    if proxy.role != "grpc":
        raise ValueError(f"--grpc writes a gRPC client's bootstrap: the proxy id must be grpc~NAMESPACE/POD, "
                         f"got {proxy}")
    env = os.environ if env is None else env
    host, port = _split_hostport(xds)
    pod_ip = (pod_ip if pod_ip is not None else env.get("POD_IP", "")).strip()
    if pod_ip and not _is_ip(pod_ip):
        raise ValueError(f"pod IP {pod_ip!r} is not an IP address")
    node_name = node_name if node_name is not None else env.get("NODE_NAME", "")
    creds: list[dict[str, Any]] = [{"type": "insecure"}]
    if tls_dir is not None:
        d = os.path.abspath(tls_dir)
        creds = [{"type": "tls", "config": {
            "ca_certificate_file": f"{d}/ca.pem", "certificate_file": f"{d}/cert.pem",
            "private_key_file": f"{d}/key.pem", "refresh_interval": GRPC_CERT_REFRESH}}]
    server_uri = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "xds_servers": [{"server_uri": server_uri, "channel_creds": creds, "server_features": ["xds_v3"]}],
        "node": {
            "id": str(proxy),
            "cluster": f"cilia-{proxy.role}",
            "metadata": proxy_metadata(proxy, pod_ip, node_name),
            "locality": {},
        },
    }
