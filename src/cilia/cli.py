"""`cilia` command line (DESIGN §5)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import yaml

from cilia import __version__


def _add_translate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ingress-http-port", type=int, default=80, help="Ingress HTTP listener port (default 80)")
    p.add_argument("--ingress-https-port", type=int, default=443, help="Ingress HTTPS listener port (default 443)")
    p.add_argument("--ingress-address", default="0.0.0.0", help="address Ingress listeners bind (default 0.0.0.0)")
    p.add_argument("--ingress-status-address", default="",
                   help="address reported in Ingress status.loadBalancer (default: --ingress-address; "
                        "a wildcard address is reported as loopback)")
    p.add_argument("--ingress-default-mode", choices=("dedicated", "shared"), default="dedicated",
                   help="where Ingresses without ingress.cilia.io/loadbalancer-mode are served: dedicated "
                        "(ingress~CLASS proxies only) or shared (also every node~NAME proxy); default dedicated")
    p.add_argument("--gateway-address", default="0.0.0.0",
                   help="address Gateway listeners bind when spec.addresses names no IPAddress (default 0.0.0.0)")
    p.add_argument("--gateway-address-pool", dest="gateway_address_pools", action="append", default=[],
                   metavar="CIDR", help="addresses a Gateway may request in spec.addresses (repeatable); one "
                   "outside every pool is not usable (Programmed=False, AddressNotUsable). Default: any IP address")
    p.add_argument("--cluster-name", default="default", help="this cluster's name for ClusterMesh (default 'default')")
    p.add_argument("--cluster-domain", default="cluster.local",
                   help="DNS suffix of Service names: gRPC targets NAME.NS.svc.DOMAIN:PORT (default cluster.local)")
    p.add_argument("--mesh-default-mode", choices=("node", "sidecar", "proxyless", "off"), default="off",
                   help="mesh mode for namespaces and pods without cilia.io/mesh (default off)")
    p.add_argument("--mesh-capture-address", default="127.0.0.1",
                   help="address the node Envoy's outbound capture listener binds (default 127.0.0.1)")
    p.add_argument("--mesh-sidecar-capture-address", default="127.0.0.1",
                   help="address a sidecar's outbound capture listener binds; 'pod-ip' = the pod's IP")
    p.add_argument("--mesh-inbound-address", default="0.0.0.0",
                   help="address a sidecar's inbound listener binds; 'pod-ip' = the pod's IP (default 0.0.0.0)")
    p.add_argument("--mesh-capture-port", type=int, default=15001, help="outbound capture port (default 15001)")
    p.add_argument("--mesh-inbound-port", type=int, default=15006,
                   help="sidecar (and, with mesh mTLS, node Envoy) inbound port (default 15006)")
    p.add_argument("--mesh-node-inbound-address", default="127.0.0.1",
                   help="address the node Envoy's inbound listener binds with mesh mTLS (default 127.0.0.1)")
    p.add_argument("--mesh-mtls-default", choices=("permissive", "strict"), default="permissive",
                   help="mesh mTLS mode of namespaces without cilia.io/mtls (default permissive)")
    p.add_argument("--mesh-trust-domain", default="", metavar="TD",
                   help="translate only: render the mesh as with a CA of this trust domain (serve takes it from "
                        "its CA: with --ca-dir, or in Kubernetes mode with mTLS, the mesh runs mTLS)")
    p.add_argument("--envoy-otel-collector", default="", metavar="HOST:PORT",
                   help="OTLP/gRPC collector Envoy's HTTP listeners send traces to (default: no tracing)")
    p.add_argument("--envoy-tracing-sampling", type=float, default=100.0, metavar="PERCENT",
                   help="percent of requests Envoy traces when --envoy-otel-collector is set (default 100)")
    p.add_argument("--envoy-listener-stat-prefix", action="store_true",
                   help="name Envoy's listener stats after the listener (listener.<name>.*)")
    p.add_argument("--ingress-controller-name", dest="ingress_controller_names", action="append", default=[],
                   metavar="NAME", help="also serve IngressClasses of this controller (repeatable; e.g. "
                   "cilium.io/ingress-controller, which also claims class 'cilium'); cilia.io/ingress-controller "
                   "is always served")
    p.add_argument("--gateway-controller-name", dest="gateway_controller_names", action="append", default=[],
                   metavar="NAME", help="also serve GatewayClasses of this controller (repeatable; e.g. "
                   "io.cilium/gateway-controller); cilia.io/gateway-controller is always served")


def _translate_options(args: argparse.Namespace) -> Any:
    from cilia.translate.context import TranslateOptions
    from cilia.translate.gateway_addresses import parse_pool
    from cilia.translate.telemetry import collector_cluster

    if args.envoy_otel_collector:
        try:
            collector_cluster(args.envoy_otel_collector)
        except ValueError as exc:
            raise SystemExit(f"cilia: --envoy-otel-collector: {exc}") from None
    try:
        pool = parse_pool(args.gateway_address_pools)
    except ValueError as exc:
        raise SystemExit(f"cilia: --gateway-address-pool: {exc}") from None

    return TranslateOptions(ingress_http_port=args.ingress_http_port, ingress_https_port=args.ingress_https_port,
                            ingress_address=args.ingress_address,
                            ingress_status_address=args.ingress_status_address,
                            ingress_default_mode=args.ingress_default_mode, gateway_address=args.gateway_address,
                            gateway_address_pool=pool,
                            local_cluster=args.cluster_name, mesh_default_mode=args.mesh_default_mode,
                            cluster_domain=args.cluster_domain,
                            mesh_capture_address=args.mesh_capture_address,
                            mesh_sidecar_capture_address=args.mesh_sidecar_capture_address,
                            mesh_inbound_address=args.mesh_inbound_address,
                            mesh_capture_port=args.mesh_capture_port, mesh_inbound_port=args.mesh_inbound_port,
                            mesh_node_inbound_address=args.mesh_node_inbound_address,
                            mesh_mtls_default=args.mesh_mtls_default, mesh_trust_domain=args.mesh_trust_domain,
                            envoy_otel_collector=args.envoy_otel_collector,
                            envoy_tracing_sampling=args.envoy_tracing_sampling,
                            envoy_listener_stat_prefix=args.envoy_listener_stat_prefix,
                            ingress_controllers=_controllers("cilia.io/ingress-controller",
                                                             args.ingress_controller_names),
                            gateway_controllers=_controllers("cilia.io/gateway-controller",
                                                             args.gateway_controller_names))


def _controllers(default: str, extra: list[str]) -> tuple[str, ...]:
    """cilia's own controller name, then the claimed ones (each once, in the order given)."""
    for name in extra:
        if not name.strip() or name != name.strip():
            raise SystemExit(f"cilia: controller name {name!r} must be non-empty without surrounding spaces")
    return tuple(dict.fromkeys([default, *extra]))


def _add_kubernetes_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Kubernetes mode (--kubernetes)")
    g.add_argument("--lease-name", default="cilia-leader", help="Lease used for leader election")
    g.add_argument("--lease-namespace", default="cilia-system", help="namespace of the Lease (default cilia-system)")
    g.add_argument("--leader-identity", default="", help="this replica's identity (default: $POD_NAME + suffix)")
    g.add_argument("--lease-duration", type=float, default=15.0, help="seconds a Lease holds without renewal")
    g.add_argument("--lease-renew-deadline", type=float, default=10.0,
                   help="seconds the leader keeps trying to renew before it stops leading")
    g.add_argument("--lease-retry-period", type=float, default=2.0, help="seconds between election attempts")
    g.add_argument("--secrets-namespace", action="append", default=None, metavar="NS",
                   help="read Secrets (TLS material) only in this namespace; repeatable (default: cilia-secrets)")
    g.add_argument("--no-leader-election", action="store_true",
                   help="always write status (only for a single replica)")
    g.add_argument("--no-status", action="store_true", help="do not write status back to Kubernetes")
    g.add_argument("--status-qps", type=float, default=10.0, help="most status writes per second (all objects)")
    g.add_argument("--status-burst", type=int, default=20, help="status writes allowed at once")
    g.add_argument("--status-min-interval", type=float, default=1.0,
                   help="least seconds between two status writes of one object")
    g.add_argument("--event-min-interval", type=float, default=10.0,
                   help="least seconds between two updates of one Event's count (repeats are folded)")


def _kube_options(args: argparse.Namespace) -> Any:
    from cilia.k8s.events import EventLimits
    from cilia.k8s.kubemode import KubeOptions
    from cilia.k8s.kubesource import DEFAULT_SECRETS_NAMESPACE, WatchOptions
    from cilia.k8s.leader import LeaseConfig
    from cilia.k8s.statuswriter import WriteLimits

    lease = LeaseConfig(args.lease_name, args.lease_namespace, args.leader_identity, args.lease_duration,
                        args.lease_renew_deadline, args.lease_retry_period)
    if not args.no_leader_election:
        lease.check()
    secrets = tuple(dict.fromkeys(args.secrets_namespace or (DEFAULT_SECRETS_NAMESPACE,)))
    if not all(secrets):
        raise ValueError("--secrets-namespace needs a namespace name")
    return KubeOptions(kubeconfig=args.kubeconfig, lease=lease, leader_election=not args.no_leader_election,
                       watch=WatchOptions(secret_namespaces=secrets),
                       write_status=not args.no_status,
                       status=WriteLimits(min_interval_s=args.status_min_interval, rate_per_s=args.status_qps,
                                          burst=args.status_burst),
                       events=EventLimits(series_min_interval_s=args.event_min_interval))


def _add_inject_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envoy-image", default="envoyproxy/envoy:v1.40.0", help="sidecar Envoy image")
    p.add_argument("--cilia-image", default="ghcr.io/cilia/cilia:0.1.0", help="image of the bootstrap init step")
    p.add_argument("--inject-xds", default="cilia.cilia-system.svc:18000", metavar="HOST:PORT",
                   help="xDS address injected sidecars connect to")
    p.add_argument("--inject-default-mode", choices=("node", "sidecar", "proxyless", "off"), default=None,
                   help="mesh mode for pods whose namespace/pod say nothing (default: --mesh-default-mode or off)")
    p.add_argument("--fail-open", action="store_true",
                   help="webhook: on an internal error admit the pod unchanged instead of denying it")
    p.add_argument("--inject-xds-tls", action="store_true",
                   help="injected sidecars use xDS over mTLS (--inject-xds names the mTLS port): a certificate "
                        "from --inject-cert-issuer, renewed by a cilia-cert sidecar")
    p.add_argument("--inject-cert-issuer", default="cilia.cilia-system.svc:18444", metavar="HOST:PORT",
                   help="issuer injected sidecars ask for their certificate (default cilia.cilia-system.svc:18444)")
    p.add_argument("--inject-ca-bundle", default=None, metavar="FILE",
                   help="cilia's CA bundle for injected pods (the webhook uses its own CA when it has one)")


def _inject_config(args: argparse.Namespace) -> Any:
    from cilia.mesh.inject import InjectConfig

    mode = args.inject_default_mode or getattr(args, "mesh_default_mode", None) or "off"
    bundle = ""
    if args.inject_ca_bundle:
        with open(args.inject_ca_bundle) as f:
            bundle = f.read()
    return InjectConfig(envoy_image=args.envoy_image, cilia_image=args.cilia_image, xds_address=args.inject_xds,
                        default_mode=mode, fail_open=args.fail_open,  # type: ignore[arg-type]
                        xds_tls=args.inject_xds_tls, cert_issuer=args.inject_cert_issuer, ca_bundle=bundle)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cilia", description="Envoy xDS control plane for a service mesh.")
    parser.add_argument("--version", action="version", version=f"cilia {__version__}")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="text lines, or JSON lines (time, level, logger, message, proxy_id, object)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the control plane (xDS, admin, optional webhook)")
    serve.add_argument("-f", "--filename", dest="paths", action="append", default=[], metavar="PATH",
                       help="manifest file or directory (repeatable); watched for changes")
    serve.add_argument("--kubernetes", action="store_true", help="watch the Kubernetes API")
    serve.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    _add_kubernetes_options(serve)
    serve.add_argument("--xds", default="127.0.0.1:18000", metavar="HOST:PORT",
                       help="plaintext xDS gRPC address, loopback only unless --xds-insecure; '' = none "
                            "(default 127.0.0.1:18000)")
    serve.add_argument("--xds-insecure", action="store_true",
                       help="allow plaintext --xds beyond loopback (every client gets any proxy's config and keys)")
    sec = serve.add_argument_group("trust (docs/security.md)")
    sec.add_argument("--xds-tls", default=None, metavar="HOST:PORT",
                     help="serve xDS (ADS, per-type, CSDS) over mTLS: client certificates from the CA required")
    sec.add_argument("--ca-dir", default=None, metavar="DIR",
                     help="CA directory (`cilia ca init`); Kubernetes mode without it: Secret cilia-ca")
    sec.add_argument("--trust-domain", default="cluster.local",
                     help="trust domain of a CA created in Kubernetes mode (default cluster.local)")
    sec.add_argument("--xds-tls-san", dest="xds_tls_names", action="append", default=[], metavar="NAME",
                     help="extra DNS name or IP on the xDS server certificate (repeatable)")
    sec.add_argument("--cert-issuer", default=None, metavar="HOST:PORT",
                     help="Kubernetes mode: issue proxy certificates to ServiceAccount tokens (HTTPS)")
    sec.add_argument("--workload-cert-ttl", default="24h", metavar="DURATION",
                     help="life of mesh workload certificates (renewed at 2/3 of it; default 24h)")
    serve.add_argument("--admin", default="127.0.0.1:19000", metavar="HOST:PORT",
                       help="admin HTTP address, loopback only unless --admin-insecure")
    serve.add_argument("--metrics", default=None, metavar="HOST:PORT",
                       help="serve only /healthz, /readyz and /metrics here (for probes and scrapers; may bind "
                            "beyond loopback, since nothing there shows configuration)")
    serve.add_argument("--admin-insecure", action="store_true",
                       help="allow the admin HTTP port (/debug: every proxy's config) beyond loopback")
    serve.add_argument("--webhook", default=None, metavar="HOST:PORT", help="serve the sidecar injection webhook")
    serve.add_argument("--tls-cert", default=None, metavar="FILE", help="webhook TLS certificate")
    serve.add_argument("--tls-key", default=None, metavar="FILE", help="webhook TLS key")
    serve.add_argument("--webhook-cert-from-ca", action="store_true",
                       help="the webhook's certificate comes from the CA (Kubernetes: the leader also sets the "
                            "caBundle of MutatingWebhookConfiguration cilia-sidecar-injector)")
    serve.add_argument("--webhook-dns-name", dest="webhook_names", action="append", default=[], metavar="NAME",
                       help="DNS name on the webhook certificate from the CA (repeatable; default "
                            "cilia.cilia-system.svc)")
    serve.add_argument("--debounce-quiet-ms", type=int, default=100, help="quiet period before a rebuild")
    serve.add_argument("--debounce-max-ms", type=int, default=1000, help="longest a change waits for a rebuild")
    serve.add_argument("--max-streams", type=int, default=10_000, help="most xDS streams held at once")
    serve.add_argument("--no-watch", action="store_true", help="read manifests once, do not watch them")
    serve.add_argument("--otlp-endpoint", default=None, metavar="HOST:PORT",
                       help="export traces and metrics over OTLP/gRPC to this collector (optional)")
    _add_translate_options(serve)
    _add_inject_options(serve)

    tr = sub.add_parser("translate", help="print the Envoy config one proxy would receive")
    tr.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH")
    tr.add_argument("--proxy", required=True, metavar="ROLE~NAME")
    tr.add_argument("-o", "--output", choices=("json", "yaml"), default="json")
    _add_translate_options(tr)

    bs = sub.add_parser("bootstrap", help="print an Envoy bootstrap (or, --grpc, a gRPC client's xDS bootstrap) "
                                          "pointing ADS at cilia")
    bs.add_argument("--proxy", required=True, metavar="ROLE~NAME")
    bs.add_argument("--xds", default="127.0.0.1:18000", metavar="HOST:PORT")
    bs.add_argument("--admin-port", type=int, default=19901)
    group = bs.add_mutually_exclusive_group()
    group.add_argument("--delta", dest="delta", action="store_true", default=True, help="Delta ADS (default)")
    group.add_argument("--sotw", dest="delta", action="store_false", help="State-of-the-World ADS")
    bs.add_argument("--pod-ip", default=None, help="pod IP for node metadata (default: $POD_IP)")
    bs.add_argument("--node-name", default=None, help="Kubernetes node for node metadata (default: $NODE_NAME)")
    bs.add_argument("--readiness-port", type=int, default=None,
                    help="serve GET /ready on POD_IP:PORT (sidecars: default the admin port)")
    bs.add_argument("--tls-dir", default=None, metavar="DIR",
                    help="ADS over mTLS with DIR's cert.pem/key.pem/ca.pem (`cilia cert`), watched for renewals")
    bs.add_argument("--trust-domain", default=None,
                    help="trust domain of the xDS server (default: the one in DIR's certificate)")
    bs.add_argument("--grpc", action="store_true",
                    help="a proxyless gRPC client's xDS bootstrap (GRPC_XDS_BOOTSTRAP) for --proxy grpc~NS/POD; "
                         "JSON unless -o yaml")
    bs.add_argument("-o", "--output", choices=("yaml", "json"), default=None, help="yaml (default), json (--grpc)")

    ca = sub.add_parser("ca", help="create or rotate cilia's certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    ca_init = ca_sub.add_parser("init", help="create a CA in DIR (ECDSA P-256; key mode 0600)")
    ca_init.add_argument("--dir", required=True, metavar="DIR")
    ca_init.add_argument("--trust-domain", default="cluster.local")
    ca_init.add_argument("--ttl", default="3650d", help="CA lifetime (default 3650d)")
    ca_rot = ca_sub.add_parser("rotate", help="new CA; the old root stays trusted for --overlap")
    ca_rot.add_argument("--dir", required=True, metavar="DIR")
    ca_rot.add_argument("--overlap", default="24h", help="how long the old root stays trusted (default 24h)")
    ca_rot.add_argument("--ttl", default="3650d", help="new CA lifetime (default 3650d)")
    ca_show = ca_sub.add_parser("show", help="trust domain and roots of the CA in DIR")
    ca_show.add_argument("--dir", required=True, metavar="DIR")

    ce = sub.add_parser("cert", help="write a proxy's (or an admin's) certificate: cert.pem key.pem ca.pem")
    who = ce.add_mutually_exclusive_group(required=True)
    who.add_argument("--proxy", metavar="ROLE~NAME", help="identity spiffe://TD/proxy/ROLE/NAME")
    who.add_argument("--admin", metavar="NAME", help="identity spiffe://TD/admin/NAME (CSDS, every config)")
    ce.add_argument("--out", required=True, metavar="DIR")
    ce.add_argument("--ttl", default="24h", help="certificate lifetime (default 24h)")
    ce.add_argument("--ca-dir", default=None, metavar="DIR", help="file mode: sign with the CA in DIR")
    ce.add_argument("--kubernetes", action="store_true",
                    help="ask cilia's issuer, proving the identity with this pod's ServiceAccount token")
    ce.add_argument("--issuer", default="cilia.cilia-system.svc:18444", metavar="HOST:PORT",
                    help="the issuer (--kubernetes; default cilia.cilia-system.svc:18444)")
    ce.add_argument("--token-file", default="/var/run/secrets/cilia/token", metavar="FILE",
                    help="projected ServiceAccount token with audience cilia (--kubernetes)")
    ce.add_argument("--ca-bundle", default=None, metavar="FILE",
                    help="cilia's CA bundle to verify the issuer (--kubernetes; default $CILIA_CA_BUNDLE)")
    ce.add_argument("--renew", action="store_true",
                    help="keep running and renew at 2/3 of the certificate's life (--kubernetes)")

    inj = sub.add_parser("inject", help="add the Envoy sidecar to Pods, Deployments, ... (offline webhook)")
    inj.add_argument("-f", "--filename", dest="path", required=True, metavar="FILE",
                     help="YAML file or directory ('-' for stdin); multi-document")
    _add_inject_options(inj)

    ag = sub.add_parser("agent", help="eBPF redirect agent: steer mesh pod traffic into the proxy (root)")
    from cilia.bpf.agent import add_arguments as add_agent_arguments

    add_agent_arguments(ag)

    st = sub.add_parser("status", help="show connected proxies, ACKed versions and NACKs")
    st.add_argument("proxy", nargs="?", default=None, metavar="PROXY_ID", help="show one proxy in full")
    st.add_argument("--admin", default="127.0.0.1:19000", metavar="HOST:PORT")
    st.add_argument("-o", "--output", choices=("table", "json"), default="table")
    st.add_argument("--envoy-admin", action="append", default=[], metavar="NODE=HOST:PORT",
                    help="an egress gateway node's Envoy admin address: list its egress flows and bytes per "
                         "policy (repeatable)")

    cf = sub.add_parser("config", help="dump the configuration a proxy was sent (from the admin endpoint)")
    cf.add_argument("proxy", metavar="PROXY_ID")
    cf.add_argument("--admin", default="127.0.0.1:19000", metavar="HOST:PORT")
    cf.add_argument("--type", choices=("listeners", "routes", "clusters", "endpoints", "secrets"), default=None,
                    help="only this resource type")
    cf.add_argument("-o", "--output", choices=("json", "yaml"), default="json")

    an = sub.add_parser("analyze", help="check manifests for mistakes before applying them",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Translate and render the manifests as `cilia serve` would, and report issues, "
                                    "negative status conditions and cross-object problems (missing Services, Secrets "
                                    "and ports; Ingress/HTTPRoute overlaps; listeners on one port; GAMMA routes no "
                                    "mesh pod uses; selectors that select nothing; CiliumEnvoyConfigs Envoy rejects).",
                        epilog="exit codes: 0 no errors (warnings allowed unless --strict); 1 errors found (or "
                               "warnings with --strict); 2 the input could not be read, or Envoy was required "
                               "and not found")
    an.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
                    help="manifest file or directory (repeatable)")
    an.add_argument("-o", "--output", choices=("text", "json"), default="text")
    an.add_argument("--envoy-validate", action=argparse.BooleanOptionalAction, default=None,
                    help="check CiliumEnvoyConfig resources with `envoy --mode validate` (default: when envoy is "
                         "installed; --envoy-validate requires it)")
    an.add_argument("--envoy", default=None, metavar="FILE", help="the envoy binary (default: envoy on PATH)")
    an.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    _add_translate_options(an)

    comp = sub.add_parser("completion", help="print a shell completion script (bash, zsh)")
    comp.add_argument("shell", choices=("bash", "zsh"), help="bash: source <(cilia completion bash); "
                      "zsh: source <(cilia completion zsh) after compinit")

    for sp in (serve, tr, bs, inj, st, cf, ce):  # the agent parser has its own --log-level
        sp.add_argument("--log-level", default=argparse.SUPPRESS, choices=("debug", "info", "warning", "error"),
                        help="log verbosity (also accepted before the command)")
    for sp in (serve, tr, bs, inj, st, cf, ce, ag):
        sp.add_argument("--log-format", default=argparse.SUPPRESS, choices=("text", "json"),
                        help="text or JSON lines (also accepted before the command)")
    return parser


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def cmd_translate(args: argparse.Namespace) -> int:
    from cilia.app import load_once
    from cilia.errors import CiliaError
    from cilia.identity import ProxyId
    from cilia.render.dump import proxy_config_json
    from cilia.render.world import render_world
    from cilia.translate import translate

    try:
        proxy = ProxyId.parse(args.proxy)
        store = load_once(args.paths)
    except CiliaError as exc:
        print(f"cilia: {exc}", file=sys.stderr)
        return 2
    result = translate(store.snapshot(), _translate_options(args))
    world = render_world(result.ir)
    sys.stdout.write(_dump(proxy_config_json(world.for_proxy(proxy), redact=False), args.output))
    errors = 0
    for issue in (*result.issues, *world.issues):
        print(str(issue), file=sys.stderr)
        errors += issue.severity == "error"
    return 1 if errors else 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from cilia.errors import CiliaError
    from cilia.identity import ProxyId
    from cilia.mesh.bootstrap import bootstrap_config, grpc_bootstrap_config

    try:
        proxy = ProxyId.parse(args.proxy)
        if args.grpc:
            cfg = grpc_bootstrap_config(proxy, args.xds, pod_ip=args.pod_ip, node_name=args.node_name,
                                        tls_dir=args.tls_dir)
        elif proxy.role == "grpc":
            raise ValueError(f"{proxy} is a proxyless gRPC client, not an Envoy: add --grpc for its bootstrap")
        else:
            cfg = bootstrap_config(proxy, args.xds, args.admin_port, args.delta, args.pod_ip,
                                   node_name=args.node_name, readiness_port=args.readiness_port,
                                   tls_dir=args.tls_dir, trust_domain=args.trust_domain)
    except (CiliaError, ValueError) as exc:
        print(f"cilia: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(_dump(cfg, args.output or ("json" if args.grpc else "yaml")))
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    from cilia.errors import CiliaError
    from cilia.security import ca as ca_mod

    try:
        if args.ca_command == "init":
            ca = ca_mod.init_ca_dir(args.dir, args.trust_domain, ca_mod.parse_duration(args.ttl))
        elif args.ca_command == "rotate":
            ca = ca_mod.rotate_ca_dir(args.dir, ca_mod.parse_duration(args.overlap), ca_mod.parse_duration(args.ttl))
        else:
            ca = ca_mod.load_ca_dir(args.dir)
    except (CiliaError, ValueError, OSError) as exc:
        print(f"cilia: {exc}", file=sys.stderr)
        return 2
    info = [ca_mod.certificate_info(c.public_bytes(_pem_encoding())) for c in ca.bundle]
    print(json.dumps({"dir": args.dir, "trust_domain": ca.trust_domain, "signing": info[0], "trusted": info},
                     indent=2))
    return 0


def _pem_encoding() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def cmd_cert(args: argparse.Namespace) -> int:
    import os
    import time

    from cilia.errors import CiliaError
    from cilia.identity import ProxyId
    from cilia.mesh.bootstrap import write_tls_dir
    from cilia.security import ca as ca_mod
    from cilia.security.spiffe import admin_uri, proxy_id_uri

    try:
        ttl = ca_mod.parse_duration(args.ttl)
        if args.kubernetes:
            if args.admin or not args.proxy:
                raise ValueError("--kubernetes issues proxy certificates only (--proxy ROLE~NAME)")
            return _cert_from_issuer(args, ProxyId.parse(args.proxy))
        if not args.ca_dir:
            raise ValueError("give --ca-dir DIR (file mode) or --kubernetes")
        ca = ca_mod.load_ca_dir(args.ca_dir)
        td = ca.trust_domain
        uri = admin_uri(td, args.admin) if args.admin else proxy_id_uri(td, ProxyId.parse(args.proxy))
        leaf = ca.issue(uris=[uri], ttl=ttl)
        write_tls_dir(args.out, leaf.cert_pem, leaf.key_pem, ca.bundle_pem)
    except (CiliaError, ValueError, OSError) as exc:
        print(f"cilia: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": os.path.abspath(args.out), "identity": uri, "not_after": leaf.not_after.isoformat(),
                      "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return 0


def _cert_from_issuer(args: argparse.Namespace, proxy: Any) -> int:
    import datetime as dt
    import os
    import time

    from cilia.mesh.bootstrap import write_tls_dir
    from cilia.security.certclient import IssueError, request_certificate

    bundle_text = open(args.ca_bundle).read() if args.ca_bundle else os.environ.get("CILIA_CA_BUNDLE", "")
    if "BEGIN CERTIFICATE" not in bundle_text:
        raise ValueError("--ca-bundle FILE (or $CILIA_CA_BUNDLE) must hold cilia's CA certificate(s)")
    delay = 1.0
    while True:
        try:
            token = open(args.token_file).read().strip()  # re-read: kubelet rotates projected tokens
            issued = request_certificate(args.issuer, proxy, token, bundle_text.encode())
        except (IssueError, OSError) as exc:
            if not args.renew:
                raise ValueError(str(exc)) from None
            print(f"cilia: {exc}; retrying in {delay:.0f} s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
            continue
        delay = 1.0
        write_tls_dir(args.out, issued.cert_pem, issued.key_pem, issued.bundle_pem)
        print(json.dumps({"out": os.path.abspath(args.out), "proxy": str(proxy),
                          "not_after": issued.not_after.isoformat()}), flush=True)
        if not args.renew:
            return 0
        life = (issued.not_after - issued.not_before).total_seconds()
        renew_at = issued.not_before + dt.timedelta(seconds=life * 2 / 3)
        time.sleep(max(1.0, (renew_at - dt.datetime.now(dt.UTC)).total_seconds()))


def _fetch_json(admin: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as resp:
        return json.load(resp)


GATEWAY_API_KINDS = frozenset({"GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute",
                               "ListenerSet"})


def egress_gateway_traffic(envoy_admins: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per gateway node (`NODE=HOST:PORT`): its Envoy's egress counters per policy, or why they could
    not be read. Envoy admin stays on the node's loopback, so the caller names where it is reachable."""
    from cilia.obs.status_view import EGRESS_STATS_FILTER, egress_traffic

    out: dict[str, dict[str, Any]] = {}
    query = urllib.parse.urlencode({"format": "json", "filter": EGRESS_STATS_FILTER})
    for spec in envoy_admins:
        node, sep, admin = spec.rpartition("=")
        if not sep:
            node = admin
        try:
            out[node] = {"policies": egress_traffic(_fetch_json(admin, f"/stats?{query}"))}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            out[node] = {"error": f"cannot read Envoy admin at {admin}: {exc}"}
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from cilia.obs.status_view import identity_table, proxy_detail, status_table

    try:
        proxies = _fetch_json(args.admin, "/debug/proxies")
        issues = _fetch_json(args.admin, "/debug/issues")
        statuses = _fetch_json(args.admin, "/debug/status")
    except (urllib.error.URLError, OSError) as exc:
        print(f"cilia: cannot reach admin at {args.admin}: {exc}", file=sys.stderr)
        return 2
    if args.proxy is not None:
        if args.proxy not in proxies:
            print(f"cilia: proxy {args.proxy!r} has not connected (known: {', '.join(proxies) or 'none'})",
                  file=sys.stderr)
            return 1
        try:
            served = (_fetch_json(args.admin, "/debug/identities").get("proxies") or {}).get(args.proxy, [])
        except (urllib.error.URLError, OSError):
            served = []
        if args.output == "json":
            print(json.dumps({args.proxy: {**proxies[args.proxy], "identities": served}}, indent=2))
        else:
            sys.stdout.write(proxy_detail(args.proxy, proxies[args.proxy]))
            for s in served:
                print(f"Identity:    {s['identity']} (expires {s['not_after']}, serial {s['serial']})")
        return 0
    try:
        security = _fetch_json(args.admin, "/debug/security")
        identities = _fetch_json(args.admin, "/debug/identities")
    except (urllib.error.URLError, OSError):
        security, identities = {}, {}
    try:
        leader = _fetch_json(args.admin, "/debug/leader")
    except (urllib.error.URLError, OSError):
        leader = {}
    traffic = egress_gateway_traffic(args.envoy_admin)
    if args.output == "json":
        print(json.dumps({"proxies": proxies, "issues": issues, "statuses": statuses, "security": security,
                          "leader": leader, "identities": identities,
                          **({"egress_traffic": traffic} if args.envoy_admin else {})}, indent=2))
        return 0
    from cilia.obs.status_view import leader_line

    if (line := leader_line(leader)) is not None:
        print(line)
    for listener in security.get("xds", ()):
        if listener.get("insecure"):
            print(f"WARNING: xDS is served in plaintext beyond loopback on {listener['address']} (--xds-insecure)")
    if security.get("admin_insecure"):
        print(f"WARNING: the admin port {security.get('admin')} is reachable beyond loopback (--admin-insecure)")
    sys.stdout.write(status_table(proxies, []))
    if identities:
        sys.stdout.write("\n" + identity_table(identities))
    agents = {pid: p["reported"] for pid, p in proxies.items() if pid.startswith("agent~") and p.get("reported")}
    if agents:
        print("\nAGENT  PHASE  PROGRAMS  MAP ENTRIES  LAST ERROR")
        for pid, rep in agents.items():
            entries = int(sum((rep.get("map_entries") or {}).values()))
            print(f"{pid}  {rep.get('phase', '-')}  {int(rep.get('programs_attached', 0))}  {entries}  "
                  f"{rep.get('last_error') or '-'}")
    from cilia.obs.status_view import egress_table

    if egress := egress_table(statuses):
        sys.stdout.write("\n" + egress)
    if args.envoy_admin:
        from cilia.obs.status_view import egress_traffic_table

        sys.stdout.write("\n" + egress_traffic_table(traffic))
    if statuses:
        from cilia.translate.gateway import describe_statuses

        print(f"\n{len(statuses)} object status(es):")
        for line in describe_statuses(statuses):
            print(f"  {line}")
        for st in statuses:
            if st["kind"] in GATEWAY_API_KINDS:
                continue
            md = st["metadata"]
            name = f"{md['namespace']}/{md['name']}" if md.get("namespace") else md["name"]
            print(f"  {st['kind']} {name}: {json.dumps(st['status'], separators=(',', ':'))}")
    if issues:
        print(f"\n{len(issues)} configuration issue(s):")
        for i in issues:
            print(f"  {i['text']}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    try:
        with urllib.request.urlopen(f"http://{args.admin}/debug/config/{quote(args.proxy, safe='~')}",
                                    timeout=10) as resp:
            source = resp.headers.get("X-Cilia-Config-Source", "")
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        print(f"cilia: {args.proxy}: {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"cilia: cannot reach admin at {args.admin}: {exc}", file=sys.stderr)
        return 2
    if source == "computed":
        print(f"cilia: {args.proxy} is not connected; showing what it would receive", file=sys.stderr)
    if args.type:
        data = {args.type: data.get(args.type, [])}
    sys.stdout.write(_dump(data, args.output))
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from cilia.mesh.inject import run_inject_cli

    try:
        cfg = _inject_config(args)
    except ValueError as exc:
        print(f"cilia: {exc}", file=sys.stderr)
        return 2
    return int(run_inject_cli(args.path, cfg))


def cmd_agent(args: argparse.Namespace) -> int:
    from cilia.bpf.agent import run_from_args

    try:
        return asyncio.run(run_from_args(args))
    except KeyboardInterrupt:
        return 130


def _duration_s(text: str, flag: str) -> float:
    from cilia.security.ca import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise SystemExit(f"cilia: {flag}: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from cilia.app import Debounce, ServeOptions, serve
    from cilia.xds.server import ServerLimits

    if not args.paths and not args.kubernetes:
        print("cilia: serve needs -f PATH (manifests) or --kubernetes", file=sys.stderr)
        return 2
    opts = ServeOptions(
        paths=tuple(args.paths), xds_address=None if args.xds in ("", "none") else args.xds,
        admin_address=args.admin, xds_tls_address=args.xds_tls, ca_dir=args.ca_dir, metrics_address=args.metrics,
        xds_tls_names=tuple(args.xds_tls_names), xds_insecure=args.xds_insecure, admin_insecure=args.admin_insecure,
        webhook_cert_from_ca=args.webhook_cert_from_ca,
        webhook_names=tuple(args.webhook_names or ("cilia.cilia-system.svc",)),
        trust_domain=args.trust_domain, cert_issuer_address=args.cert_issuer,
        debounce=Debounce(args.debounce_quiet_ms / 1000, args.debounce_max_ms / 1000),
        translate=dataclasses.replace(_translate_options(args), mesh_trust_domain=""),  # from the CA, if any
        workload_cert_ttl_s=_duration_s(args.workload_cert_ttl, "--workload-cert-ttl"),
        limits=ServerLimits(max_streams=args.max_streams),
        watch=not args.no_watch,
        webhook_address=args.webhook, tls_cert=args.tls_cert, tls_key=args.tls_key,
        inject=_inject_config(args) if args.webhook else None,
        otlp_endpoint=args.otlp_endpoint,
    )
    if not args.kubernetes:
        from cilia.mesh.egresshost import local_ipv4

        # File mode: this machine is the egress gateway node (egressIP must be local; interface -> address).
        host = local_ipv4()
        if host is not None:
            opts = dataclasses.replace(opts, translate=dataclasses.replace(
                opts.translate, egress_local_ips=host[0], egress_interfaces=host[1]))
    if args.kubernetes:
        try:
            opts = dataclasses.replace(opts, kubernetes=_kube_options(args))
        except ValueError as exc:
            print(f"cilia: {exc}", file=sys.stderr)
            return 2
    if args.webhook and not (args.tls_cert and args.tls_key) and not args.webhook_cert_from_ca:
        print("cilia: --webhook needs --tls-cert and --tls-key, or --webhook-cert-from-ca (the API server only "
              "calls HTTPS webhooks)", file=sys.stderr)
        return 2
    from cilia.app import check_exposure

    refusals = check_exposure(opts)
    for message in refusals:
        print(f"cilia: {message}", file=sys.stderr)
    if refusals:
        return 2
    from cilia.errors import CiliaError

    try:
        return asyncio.run(serve(opts))
    except KeyboardInterrupt:
        return 130
    except CiliaError as exc:
        print(f"cilia: {exc}", file=sys.stderr)
        return 1


COMMANDS = {"serve": cmd_serve, "translate": cmd_translate, "bootstrap": cmd_bootstrap, "status": cmd_status,
            "inject": cmd_inject, "agent": cmd_agent, "config": cmd_config, "ca": cmd_ca, "cert": cmd_cert}


def cmd_completion(args: argparse.Namespace) -> int:
    from cilia.completion import completion_script

    sys.stdout.write(completion_script(build_parser(), args.shell))
    return 0


COMMANDS["completion"] = cmd_completion


def cmd_analyze(args: argparse.Namespace) -> int:
    import shutil

    from cilia.analyze import EXIT_USAGE, analyze, find_envoy
    from cilia.errors import CiliaError

    envoy = None
    if args.envoy_validate is not False:
        envoy = (shutil.which(args.envoy) if args.envoy else None) or (None if args.envoy else find_envoy())
        if envoy is None and args.envoy_validate:
            print(f"cilia: --envoy-validate: {args.envoy or 'envoy'} not found", file=sys.stderr)
            return EXIT_USAGE
    try:
        report = analyze(args.paths, _translate_options(args), envoy=envoy)
    except CiliaError as exc:
        print(f"cilia: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if envoy is None:
        report.envoy = "skipped (--no-envoy-validate)" if args.envoy_validate is False else "skipped (no envoy found)"
    if args.output == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        sys.stdout.write(report.text())
    return report.exit_code(args.strict)


COMMANDS["analyze"] = cmd_analyze


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from cilia.obs.logs import configure_logging

    configure_logging(str(args.log_level), args.log_format)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
