"""Wiring: sources -> store -> translate -> render -> xDS cache, plus admin. The only place that starts tasks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from cilia.diagnostics import Issue
from cilia.identity import ProxyId
from cilia.k8s.filesource import FileSource
from cilia.k8s.store import InputSnapshot, Store
from cilia.obs.admin import make_admin_app, start_admin
from cilia.obs.telemetry import Telemetry
from cilia.render.dump import proxy_config_json, sent_config_json, world_sizes
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from cilia.translate import ENDPOINT_KINDS, TranslationResult, translate
from cilia.translate.context import TranslateOptions
from cilia.translate.grpc import GRPC_ROLE
from cilia.xds.cache import ConfigCache
from cilia.xds.server import ServerLimits, XdsServer
from cilia.xds.status import StatusRegistry

log = logging.getLogger("cilia")


@dataclass(frozen=True, slots=True)
class Debounce:
    """Wait for `quiet_s` without changes, but never longer than `max_delay_s` after the first one.
    Endpoint-only changes wait `endpoint_quiet_s` (they take the translation fast path)."""

    quiet_s: float = 0.1
    max_delay_s: float = 1.0
    endpoint_quiet_s: float = 0.01


@dataclass(frozen=True, slots=True)
class ServeOptions:
    paths: tuple[str, ...] = ()
    xds_address: str | None = "127.0.0.1:18000"  # None: no plaintext listener
    admin_address: str = "127.0.0.1:19000"
    debounce: Debounce = Debounce()
    translate: TranslateOptions = TranslateOptions()
    limits: ServerLimits = ServerLimits()
    watch: bool = True
    webhook_address: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    inject: Any = None  # cilia.mesh.inject.InjectConfig when the webhook is served
    kubernetes: Any = None  # cilia.k8s.kubemode.KubeOptions in --kubernetes mode
    otlp_endpoint: str | None = None  # OTLP/gRPC collector HOST:PORT for traces and metrics (optional)
    xds_tls_address: str | None = None  # xDS over mTLS (client certificates from the CA required)
    ca_dir: str | None = None  # file-mode CA directory (`cilia ca init`); Kubernetes mode: Secret cilia-ca
    xds_tls_names: tuple[str, ...] = ()  # extra DNS names / IPs on the xDS server certificate
    xds_insecure: bool = False  # allow plaintext xDS beyond loopback
    admin_insecure: bool = False  # allow the admin HTTP port beyond loopback
    metrics_address: str | None = None  # /healthz, /readyz, /metrics only (may be beyond loopback)
    webhook_cert_from_ca: bool = False  # the webhook's serving certificate comes from the CA
    webhook_names: tuple[str, ...] = ()  # DNS names on that certificate
    trust_domain: str = "cluster.local"  # for a CA that Kubernetes mode creates
    cert_issuer_address: str | None = None  # Kubernetes mode: TokenReview-based certificate issuance (HTTPS)
    issuance: Any = None  # cilia.security.issuer.IssuancePolicy
    workload_cert_ttl_s: float = 86400.0  # mesh workload certificates (renewed at 2/3 of their life)
    # Proxyless gRPC targets are built once the first gRPC client connects (TranslateOptions.grpc_targets);
    # False: built from the start, as `translate.grpc_targets` says.
    grpc_targets_on_demand: bool = True


def starting_translate_options(opts: ServeOptions) -> TranslateOptions:
    """What `cilia serve` translates with until a proxy of a deferred role connects."""
    if opts.grpc_targets_on_demand:
        return dataclasses.replace(opts.translate, grpc_targets=False)
    return opts.translate


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(opts: ServeOptions) -> list[str]:
    """Refusals (as messages) for plaintext endpoints beyond loopback that were not explicitly allowed."""
    errors = []
    if opts.xds_address:
        host, _ = split_hostport(opts.xds_address)
        if not is_loopback_host(host) and not opts.xds_insecure:
            errors.append(f"--xds {opts.xds_address} would serve every proxy's configuration and TLS keys in "
                          "plaintext beyond loopback; use --xds-tls with --ca-dir (mTLS), bind --xds to "
                          "127.0.0.1, or pass --xds-insecure if you really mean it")
    host, _ = split_hostport(opts.admin_address)
    if not is_loopback_host(host) and not opts.admin_insecure:
        errors.append(f"--admin {opts.admin_address} would expose /debug (every proxy's configuration) beyond "
                      "loopback; bind it to 127.0.0.1 or pass --admin-insecure")
    if opts.xds_tls_address and not opts.ca_dir and opts.kubernetes is None:
        errors.append("--xds-tls needs --ca-dir DIR (create one with `cilia ca init --dir DIR`) or --kubernetes")
    if opts.webhook_cert_from_ca and not (opts.ca_dir or opts.kubernetes is not None):
        errors.append("--webhook-cert-from-ca needs --ca-dir DIR or --kubernetes")
    if not opts.xds_address and not opts.xds_tls_address:
        errors.append("no xDS listener: give --xds HOST:PORT and/or --xds-tls HOST:PORT")
    if opts.cert_issuer_address and opts.kubernetes is None:
        errors.append("--cert-issuer checks ServiceAccount tokens and needs --kubernetes "
                      "(file mode issues certificates with `cilia cert --ca-dir`)")
    return errors


def _listen(address: str) -> str:
    host, port = split_hostport(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class Counters:
    rebuilds: int = 0
    rebuild_seconds_total: float = 0.0
    last_rebuild_seconds: float = 0.0
    source_events: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


REBUILD_RETRY_S = 5.0  # after a failed rebuild that proxies wait for (a role built on demand)


class ControlPlane:
    def __init__(self, opts: ServeOptions) -> None:
        if opts.kubernetes is not None:  # translators name the namespaces Secrets are read in
            opts = dataclasses.replace(opts, translate=dataclasses.replace(
                opts.translate, secret_namespaces=tuple(opts.kubernetes.watch.secret_namespaces)))
        opts = dataclasses.replace(opts, translate=starting_translate_options(opts))
        self.opts = opts
        self.store = Store()
        self.cache = ConfigCache()
        self.cache.on_demand = self._on_demand
        self.status = StatusRegistry()
        self.telemetry = Telemetry.create(opts.otlp_endpoint)
        self.metrics = self.telemetry.metrics
        self.xds = XdsServer(self.cache, self.status, opts.limits, self.telemetry.xds)
        self.metrics.observe(proxies=self._proxy_counts, snapshot=self._snapshot_sizes, issues=self._issue_counts)
        self.metrics.observe(sync=self._sync_counts, status_writes=self._status_write_counts)
        self._sizes: tuple[object, dict[str, tuple[int, int]]] = (None, {})
        self.render_cache = ResourceCache()
        self.result: TranslationResult | None = None
        self.render_issues: tuple[Issue, ...] = ()
        self.counters = Counters()
        self.admin_port = 0
        self.xds_port = 0
        self.xds_tls_port = 0
        self.metrics_port = 0
        self.webhook_port = 0
        self.issuer_port = 0
        self.ca_source: Any = None  # () -> CertificateAuthority, when a CA is configured
        self.workloads: Any = None  # cilia.security.workload.WorkloadCertificates, with a CA (mesh mTLS)
        self._inject_memo: Any = None
        self._changed = asyncio.Event()
        self._namespaces_changed = asyncio.Event()
        self._first_change = 0.0
        self._last_change = 0.0
        self._changed_kinds: set[str] = set()
        self._started = False
        self._stop = asyncio.Event()
        self.freeze_stages = False  # collector_paused(freeze=True) around translate and render: `serve` sets it
        self.kube: Any = None  # cilia.k8s.kubemode.KubeMode in --kubernetes mode
        self.store.subscribe(self._on_change)

    # -- change handling -------------------------------------------------------------------------------
    def _on_change(self, kinds: frozenset[str]) -> None:
        now = time.monotonic()
        if not self._changed.is_set():
            self._first_change = now
        self._last_change = now
        self._changed_kinds |= kinds
        self.counters.source_events += 1
        self.metrics.source_event(kinds)
        self._changed.set()
        if "Namespace" in kinds:  # wake every webhook request waiting for a namespace, then start afresh
            self._namespaces_changed.set()
            self._namespaces_changed = asyncio.Event()

    def _on_demand(self, role: str) -> None:
        """A proxy of a role the config leaves out wants serving: build that part from now on (it stays
        built: clients come and go, and a translation with it costs little more once its memo is warm)."""
        if role in GRPC_ROLE and not self.opts.translate.grpc_targets:
            log.info("a proxyless gRPC client connected: building gRPC targets from now on")
            self.opts = dataclasses.replace(self.opts, translate=dataclasses.replace(self.opts.translate,
                                                                                       grpc_targets=True))
            self._request_rebuild()

    def _request_rebuild(self) -> None:
        """A rebuild as soon as the debounce loop sees it, counted as no source event."""
        now = time.monotonic()
        if not self._changed.is_set():
            self._first_change = now
        self._last_change = now
        self._changed.set()

    def _build(self, snapshot: InputSnapshot, batch: Any) -> tuple[TranslationResult, RenderedWorld]:
        """Translate and render; pure apart from the render cache, so it may run off the event loop."""
        with collector_paused(self.freeze_stages), batch.stage("translate"):
            result = translate(snapshot, self.opts.translate, self.result)
        with collector_paused(self.freeze_stages), batch.stage("render"):
            model = result.ir if self.workloads is None else self.workloads.apply(result.ir)
            world = render_world(model, self.render_cache, snapshot.revision)
        return result, world

    def rebuild(self, first_event_at: float | None = None, kinds: frozenset[str] = frozenset()) -> None:
        t0 = time.perf_counter()
        with self.telemetry.change_batch(first_event_at, kinds) as batch:
            snapshot = self.store.snapshot()
            self._publish(snapshot, *self._build(snapshot, batch), batch)
        self._done(snapshot, t0)

    async def rebuild_async(self, first_event_at: float | None = None, kinds: frozenset[str] = frozenset()) -> None:
        """Rebuild in a worker thread so that xDS streams keep being served meanwhile."""
        t0 = time.perf_counter()
        with self.telemetry.change_batch(first_event_at, kinds) as batch:
            snapshot = self.store.snapshot()
            result, world = await asyncio.to_thread(self._build, snapshot, batch)
            self._publish(snapshot, result, world, batch)
        self._done(snapshot, t0)

    def _publish(self, snapshot: InputSnapshot, result: TranslationResult, world: RenderedWorld, batch: Any) -> None:
        self.result = result
        self.render_issues = world.issues
        with batch.stage("push"):
            batch.begin_push()
            self.cache.set_world(world)
        self.metrics.set_object_counts({k: len(v) for k, v in snapshot.objects.items()})
        if self.kube is not None:
            self.kube.after_rebuild(result.statuses, self.all_issues())
        for issue in world.issues:
            log.warning("%s", issue, extra={"object": issue.object})

    def _done(self, snapshot: InputSnapshot, t0: float) -> None:
        dt = time.perf_counter() - t0
        self.counters.rebuilds += 1
        self.counters.rebuild_seconds_total += dt
        self.counters.last_rebuild_seconds = dt
        log.info("config revision %d built in %.1f ms (%d objects)", snapshot.revision, dt * 1000,
                 snapshot.count())

    async def _debounce_loop(self) -> None:
        d = self.opts.debounce
        while True:
            await self._changed.wait()
            while True:
                quiet = d.endpoint_quiet_s if self._changed_kinds <= ENDPOINT_KINDS else d.quiet_s
                now = time.monotonic()
                deadline = min(self._last_change + quiet, self._first_change + d.max_delay_s)
                if now >= deadline:
                    break
                await asyncio.sleep(deadline - now)
            first, kinds = self._first_change, frozenset(self._changed_kinds)
            self._changed.clear()
            self._changed_kinds.clear()
            try:
                await self.rebuild_async(first, kinds)
            except Exception:
                log.exception("rebuild failed; the previous configuration stays in place")
                self.result = None  # the changes this build consumed are unknown to the next: start afresh
                if self.cache.waiting:  # proxies wait for config only a rebuild brings: try again
                    asyncio.get_running_loop().call_later(REBUILD_RETRY_S, self._request_rebuild)

    # -- run -------------------------------------------------------------------------------------------
    async def run(self, sources_ready: asyncio.Event | None = None) -> None:
        file_source = FileSource(self.opts.paths, self.store) if self.opts.paths else None
        if file_source is not None:
            file_source.load()
        if self.opts.kubernetes is not None:
            from cilia.k8s.kubemode import KubeMode

            self.kube = await KubeMode.connect(self.store, self.opts.kubernetes,
                                               on_watch_restart=self._watch_restarted)
            if self.kube.elector is not None:
                self.metrics.observe(leader=self.kube.leader_metric)
            await self.kube.initial_sync()
        ca_holder = await self._setup_security()
        self._changed.clear()
        self._changed_kinds.clear()
        self.rebuild()
        o = self.opts
        await self.xds.start(_listen(o.xds_address) if o.xds_address else None,
                             _listen(o.xds_tls_address) if o.xds_tls_address else None)
        self.xds_port, self.xds_tls_port = self.xds.port, self.xds.tls_port
        self.metrics.set_xds_listeners(self._xds_listeners())
        if o.xds_address and o.xds_insecure and not is_loopback_host(split_hostport(o.xds_address)[0]):
            log.warning("xDS is served in PLAINTEXT on %s (--xds-insecure): any client that reaches it gets every "
                        "proxy's configuration and TLS keys", o.xds_address)
        ahost, aport = split_hostport(self.opts.admin_address)
        runner, self.admin_port = await start_admin(make_admin_app(self), ahost, aport)
        metrics_runner = None
        if self.opts.metrics_address:
            mhost, mport = split_hostport(self.opts.metrics_address)
            metrics_runner, self.metrics_port = await start_admin(make_admin_app(self, debug=False), mhost, mport)
        webhook_runner = await self._start_webhook()
        issuer_runner = await self._start_issuer()
        self._started = True
        if sources_ready is not None:
            sources_ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._debounce_loop())
                if file_source is not None and self.opts.watch:
                    tg.create_task(file_source.watch(self._stop))
                for coro in self.kube.coroutines(self.status) if self.kube is not None else ():
                    tg.create_task(coro)
                if ca_holder is not None:
                    tg.create_task(ca_holder.run())
                for coro in self._tls_renewals:
                    tg.create_task(coro)
                tg.create_task(self._wait_stop())
        except* _Stopped:
            pass
        finally:
            await self.xds.stop()
            await runner.cleanup()
            for r in (webhook_runner, issuer_runner, metrics_runner):
                if r is not None:
                    await r.cleanup()
            if self.kube is not None:
                await self.kube.close()
            self.telemetry.shutdown()

    def _watch_restarted(self, kind: str, reason: str) -> None:
        self.metrics.watch_restarted(kind, reason)

    # -- trust ---------------------------------------------------------------------------------------------
    async def _setup_security(self) -> Any:
        """Find the CA (file mode: --ca-dir; Kubernetes: Secret cilia-ca, created when missing) and give the
        xDS server its credentials and authorizer. Returns the Secret poller in Kubernetes mode."""
        from cilia.security.authz import Authorizer
        from cilia.xds.tls import ServerTls

        o = self.opts
        self._tls_renewals: list[Any] = []
        wants_ca = o.xds_tls_address or o.webhook_cert_from_ca or o.cert_issuer_address
        holder = None
        if o.ca_dir:
            from cilia.security.ca import CaDirSource

            self.ca_source = CaDirSource(o.ca_dir)
            self.ca_source()  # fail at start, with the CA's own error, if it is unusable
        elif wants_ca and self.kube is not None:
            from cilia.k8s.casecret import CaHolder, CaSecretRef, load_or_create_ca

            ref = CaSecretRef(namespace=self.kube.opts.lease.namespace)
            holder = CaHolder(self.kube.api, ref, await load_or_create_ca(self.kube.api, ref, o.trust_domain))
            self.ca_source = holder
        if self.ca_source is None:
            return None
        self._setup_mesh_mtls()
        if o.xds_tls_address:
            self.xds.tls = ServerTls(self.ca_source, o.xds_tls_names)
        self.xds.authorizer = Authorizer(self.ca_source().trust_domain, self._pod_service_account)
        if self.kube is not None:
            from cilia.k8s.webhookca import publish_ca_bundle

            self._tls_renewals.append(publish_ca_bundle(self.kube, self.ca_source, self.kube.opts.lease.namespace,
                                                        webhook=bool(o.webhook_address and o.webhook_cert_from_ca)))
        return holder

    def _setup_mesh_mtls(self) -> None:
        """With a CA the mesh runs mTLS: the translator learns the trust domain, and workload certificates
        are issued and renewed here (a renewal asks for a rebuild, which serves the new secrets)."""
        import dataclasses
        import datetime as dt

        from cilia.security.workload import WorkloadCertificates

        ttl = dt.timedelta(seconds=self.opts.workload_cert_ttl_s)
        self.workloads = WorkloadCertificates(self.ca_source, ttl)
        translate_opts = dataclasses.replace(self.opts.translate, mesh_trust_domain=self.ca_source().trust_domain)
        self.opts = dataclasses.replace(self.opts, translate=translate_opts)

        def rebuild() -> None:
            if not self._changed.is_set():
                self._first_change = time.monotonic()
            self._last_change = time.monotonic()
            self._changed.set()

        self._tls_renewals.append(self.workloads.run(rebuild))

    def identities(self) -> dict[str, Any]:
        """/debug/identities: mesh mTLS state and, per proxy, the workload identities it is served."""
        if self.workloads is None:
            return {"mesh_mtls": False, "message": "no CA configured (--ca-dir, or Kubernetes mode with mTLS): "
                                                   "mesh traffic between proxies is plaintext", "proxies": {}}
        world = self.cache.world
        out: dict[str, Any] = {}
        for pid in self.status.proxies:
            proxy = ProxyId.parse(pid)
            served = self.workloads.served_by(lambda s, p=proxy: s.matches(p.role, p.name, world.node_labels))
            if served:
                out[pid] = [{"secret": s.secret, "identity": s.uri, "serial": s.serial, "not_after": s.not_after}
                            for s in served]
        return {"mesh_mtls": True, "trust_domain": self.workloads.trust_domain, "proxies": out,
                **self.workloads.summary()}

    def _pod_service_account(self, namespace: str, pod: str) -> str | None:
        obj = self.store.get("Pod", namespace, pod)
        return None if obj is None else str(obj.spec.service_account)

    def _xds_listeners(self) -> list[tuple[str, str, bool]]:
        o = self.opts
        out = []
        if o.xds_address:
            out.append(("plaintext", o.xds_address, not is_loopback_host(split_hostport(o.xds_address)[0])))
        if o.xds_tls_address:
            out.append(("mtls", o.xds_tls_address, False))
        return out

    def security(self) -> dict[str, Any]:
        """/debug/security: how xDS is exposed and which CA roots are trusted (no keys)."""
        from cilia.security.ca import certificate_info

        listeners = [{"transport": t, "address": a, "insecure": i} for t, a, i in self._xds_listeners()]
        out: dict[str, Any] = {"xds": listeners, "admin": self.opts.admin_address,
                               "admin_insecure": not is_loopback_host(split_hostport(self.opts.admin_address)[0]),
                               "denied_streams": self.xds.denied, "mesh_mtls": self.workloads is not None}
        if self.ca_source is not None:
            ca = self.ca_source()
            out["trust_domain"] = ca.trust_domain
            out["roots"] = [certificate_info(c.public_bytes(Encoding.PEM)) for c in ca.bundle]
        return out

    def _ca_https_context(self, names: tuple[str, ...]) -> Any:
        """An SSL context whose certificate the CA signs, renewed at 2/3 of its life."""
        from cilia.security.serving import ServingCertificate

        serving = ServingCertificate(self.ca_source, names)
        self._tls_renewals.append(serving.run())
        return serving.context

    async def _start_webhook(self) -> web.AppRunner | None:
        if not self.opts.webhook_address:
            return None
        from cilia.mesh.webhook import make_webhook_app, serve_https, server_ssl_context, webhook_port

        assert self.opts.inject is not None
        host, port = split_hostport(self.opts.webhook_address)
        from_ca = self.opts.webhook_cert_from_ca
        if from_ca:
            ctx = self._ca_https_context(self.opts.webhook_names)
        else:
            assert self.opts.tls_cert and self.opts.tls_key
            ctx = server_ssl_context(self.opts.tls_cert, self.opts.tls_key)
        # Kubernetes mode: a pod may be created right after its namespace, before the watch has it.
        wait = self.wait_for_namespace if self.opts.kubernetes is not None else None
        runner = await serve_https(make_webhook_app(self._inject_config, self.namespace_meta, namespace_wait=wait),
                                   host, port, ctx)
        self.webhook_port = webhook_port(runner)
        log.info("injection webhook listening on %s:%d", host, self.webhook_port)
        return runner

    def _inject_config(self) -> Any:
        """The injection config, carrying the CA bundle of the moment when sidecars use mTLS."""
        cfg = self.opts.inject
        if not cfg.xds_tls or self.ca_source is None:
            return cfg
        bundle = self.ca_source().bundle_pem.decode()
        if self._inject_memo is None or self._inject_memo.ca_bundle != bundle:
            self._inject_memo = dataclasses.replace(cfg, ca_bundle=bundle)
        return self._inject_memo

    async def _start_issuer(self) -> web.AppRunner | None:
        if not self.opts.cert_issuer_address or self.kube is None or self.ca_source is None:
            return None
        from cilia.k8s.tokenreview import token_reviewer
        from cilia.mesh.webhook import serve_https, webhook_port
        from cilia.security.issuer import IssuancePolicy, make_issuer_app
        from cilia.xds.tls import DEFAULT_SERVER_NAMES

        policy = self.opts.issuance or IssuancePolicy(trust_domain=self.ca_source().trust_domain,
                                                      cilia_namespace=self.kube.opts.lease.namespace)
        host, port = split_hostport(self.opts.cert_issuer_address)
        ctx = self._ca_https_context((*DEFAULT_SERVER_NAMES, *self.opts.xds_tls_names))
        runner = await serve_https(make_issuer_app(self.ca_source, token_reviewer(self.kube.api), policy),
                                   host, port, ctx)
        self.issuer_port = webhook_port(runner)
        log.info("certificate issuer listening on %s:%d (TokenReview, audience cilia)", host, self.issuer_port)
        return runner

    async def wait_for_namespace(self, namespace: str, within_s: float = 3.0) -> None:
        """Until the store knows `namespace` (the watch delivers it), at most `within_s`."""
        deadline = time.monotonic() + within_s
        while True:
            changed = self._namespaces_changed  # taken before looking: a change after this sets it
            if self.store.get("Namespace", "", namespace) is not None:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        if self.store.get("Namespace", "", namespace) is None:
            log.warning("webhook: namespace %s is still unknown after %.0f s; deciding without its labels",
                        namespace, within_s)

    def namespace_meta(self, namespace: str) -> tuple[dict[str, str], dict[str, str]] | None:
        """Labels and annotations of a Namespace the store knows, for the webhook's mode decision."""
        obj = self.store.get("Namespace", "", namespace)
        if obj is None:
            return None
        return dict(obj.meta.labels), dict(obj.meta.annotations)

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _Stopped()

    def stop(self) -> None:
        self._stop.set()

    # -- admin view --------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return all(ok for _, ok, _ in self.ready_checks())

    def ready_checks(self) -> list[tuple[str, bool, str]]:
        """`/readyz` checks: (name, ok, detail). `leader-election` fails when no replica has led for longer
        than the lease duration (see cilia.k8s.leader)."""
        serving = self._started and self.cache.ready
        checks = [("config", serving, "" if serving else "starting: no configuration built or xDS not served yet")]
        if self.kube is not None and self.kube.elector is not None:
            checks.append(("leader-election", *self.kube.elector.healthy()))
        return checks

    def leader(self) -> dict[str, Any]:
        """`/debug/leader`: who writes status, or why nobody does."""
        if self.kube is None:
            return {"enabled": False, "leading": False, "ready": True,
                    "message": "file mode: no leader election, status is served at /debug/status"}
        return self.kube.leader_status()

    def all_issues(self) -> tuple[Issue, ...]:
        return (self.result.issues if self.result else ()) + self.render_issues

    def issues(self) -> list[dict[str, Any]]:
        return [{"severity": i.severity, "location": i.location, "object": i.object, "field": i.field,
                 "message": i.message, "text": str(i)} for i in self.all_issues()]

    def proxies(self) -> dict[str, Any]:
        return self.status.as_dict()

    def proxy_config(self, proxy_id: str) -> dict[str, Any]:
        """What a connected proxy was last sent; for one not connected, what it would receive."""
        try:
            proxy = ProxyId.parse(proxy_id)
        except Exception as exc:
            raise ValueError(str(exc)) from None
        if self.xds.streams.get(str(proxy)):
            return sent_config_json(lambda t: self.xds.sent_resources(str(proxy), t))
        return proxy_config_json(self.cache.resources_for(proxy))

    async def wait_config(self, proxy_id: str, within_s: float = 30.0) -> None:
        """Before `proxy_config` of a proxy whose role the config leaves out: build and wait for it."""
        try:
            proxy = ProxyId.parse(proxy_id)
        except Exception:
            return  # proxy_config says why
        if not self.cache.covers(proxy):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cache.wait_covered(proxy), within_s)

    def proxy_config_source(self, proxy_id: str) -> str:
        """"sent" when /debug/config shows what the proxy was sent, "computed" when what it would get."""
        return "sent" if self.xds.streams.get(proxy_id) else "computed"

    # -- metric views (read at scrape time) ---------------------------------------------------------------
    def _proxy_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for pid, ps in self.status.proxies.items():
            if ps.streams:
                key = (pid.split("~", 1)[0], ps.variant)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _sync_counts(self) -> dict[tuple[str, str], int]:
        """Connected proxies by (role, sync state): the worst state among the types each was sent."""
        counts: dict[tuple[str, str], int] = {}
        for pid, ps in self.status.proxies.items():
            if not ps.streams:
                continue
            states = {ts.state for ts in ps.types.values()}
            state = next((s for s in ("NACKED", "STALE", "SYNCED") if s in states), "NOT_SENT")
            key = (pid.split("~", 1)[0], state)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _status_write_counts(self) -> dict[str, int]:
        writer = self.kube.writer if self.kube is not None else None
        if writer is None:
            return {}
        st = writer.stats
        return {"written": st.writes, "conflict": st.conflicts, "not_found": st.not_found, "error": st.errors}

    def _issue_counts(self) -> dict[str, int]:
        counts = {"error": 0, "warning": 0}
        for issue in self.all_issues():
            counts[issue.severity] = counts.get(issue.severity, 0) + 1
        return counts

    def _snapshot_sizes(self) -> dict[str, tuple[int, int]]:
        world = self.cache.world
        if self._sizes[0] is not world:
            self._sizes = (world, world_sizes(world))
        return self._sizes[1]

    def object_statuses(self) -> list[dict[str, Any]]:
        if self.kube is not None and self.kube.writer is not None:  # includes the CEC conditions it adds
            return [s.as_dict() for s in self.kube.writer.desired()]
        if self.result is not None:  # file mode: the same stanzas, CEC conditions included
            from cilia.k8s.kubesource import ObservedObject
            from cilia.k8s.statuswriter import current_nacks, envoy_config_statuses

            configs = [ObservedObject(o.kind, o.meta.namespace, o.meta.name, o.api_version, o.meta.generation, "",
                                      None)
                       for kind in ("CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig")
                       for o in self.store.objects_of_kind(kind)]
            cec = envoy_config_statuses(configs, self.all_issues(), current_nacks(self.status), file_mode=True)
            return [st.as_dict() for st in (*self.result.statuses, *cec)]
        return []

    def agents(self) -> dict[str, Any]:
        return {pid: p for pid, p in self.status.as_dict().items() if pid.startswith("agent~")}

    def metrics_text(self) -> str:
        return self.metrics.prometheus_text()

    def latency_series(self) -> list[dict[str, float]]:
        """Change -> ACK latency per minute of the last hour (the admin page's chart)."""
        return self.metrics.xds.recent.series()


class _Stopped(Exception):
    pass



GC_THRESHOLDS = (10_000, 10, 10)
# Young objects a stream holds while a change fans out (its write in flight: grpc's coroutine, future and
# callbacks). The young threshold grows with the streams held, so a change crosses it about once: at 10,000
# streams a fixed 10,000 made ten young collections per change that only promoted live writes, and those
# promotions brought on middle and full collections over every stream's state (376 ms of collector time
# per change, 33 ms with the threshold scaled; bench/README.md).
GC_YOUNG_PER_STREAM = 12
GC_RESCALE_INTERVAL_S = 2.0


def collector_thresholds(streams: int) -> tuple[int, int, int]:
    """The collector's thresholds for a process holding `streams` xDS streams."""
    young, middle, old = GC_THRESHOLDS
    return (max(young, GC_YOUNG_PER_STREAM * streams), middle, old)


async def scale_collector(stream_count: Callable[[], int], interval_s: float = GC_RESCALE_INTERVAL_S) -> None:
    """Keep the collector's thresholds at `collector_thresholds` of the streams held (checked every
    `interval_s`; a connect storm is met within that), and collect frozen objects once they have grown
    (`release_frozen`)."""
    current = gc.get_threshold()
    while True:
        wanted = collector_thresholds(stream_count())
        if wanted != current:
            gc.set_threshold(*wanted)
            current = wanted
        release_frozen()
        await asyncio.sleep(interval_s)


@contextlib.contextmanager
def collector_paused(freeze: bool = False) -> Iterator[None]:
    """No cyclic garbage collection while a translation or render runs: what they allocate is mostly
    the new world, which survives, so collections during them only walk it (about 5% of a 10,000-route
    translation from scratch); the few cycles they leave are collected once they are done.

    With `freeze` (`cilia serve`), after a stage that left FREEZE_MIN_YOUNG young objects or more (a
    translation from scratch, not an edit), what is alive is moved out of the collector's reach
    (gc.freeze, which costs no walk): the young collection those allocations bring on next would walk
    the whole new world to find nothing (translation and render leave no cyclic garbage:
    tests/unit/test_render_shared_json.py), ~80 ms after a 10,000-route translation from scratch.
    After small stages nothing is frozen: freezing each edit's few objects, and with them every
    stream's state, made fan-out slower (bench/README.md). `release_frozen` collects what was frozen
    once it has grown."""
    was_enabled = gc.isenabled()
    gc.disable()
    young_before = gc.get_count()[0]
    try:
        yield
    finally:
        if freeze and gc.get_count()[0] - young_before >= FREEZE_MIN_YOUNG:  # what this stage left
            gc.freeze()
            _FROZEN_SINCE_CHECK[0] = True
        if was_enabled:
            gc.enable()


FREEZE_MIN_YOUNG = 100_000  # young objects a stage leaves for it to be frozen (collector_paused)
# Frozen objects (gc.get_freeze_count) past this multiple of what was frozen right after the last full
# collection (collect_and_freeze), and past it by FROZEN_SLACK at least: unfrozen, collected in full and
# frozen again. Whatever cyclic garbage a freeze caught (another thread's, during a stage) is collected
# then; a process whose heap does not grow never pays for another full collection.
FROZEN_GROWTH = 1.5
FROZEN_SLACK = 200_000
_FROZEN_BASELINE: list[int] = []  # frozen objects right after the last full collection; none yet: empty
# Whether a stage froze objects since release_frozen last looked: gc.get_freeze_count walks every frozen
# object (~5 ms at a million), so it is read only after a freeze, not on every check of an idle process.
_FROZEN_SINCE_CHECK = [False]


def collect_and_freeze() -> None:
    """A full collection, then everything alive frozen; the baseline `release_frozen` measures from."""
    _FROZEN_SINCE_CHECK[0] = False  # first: a stage freezing meanwhile (another thread) is looked at next time
    gc.collect()
    gc.freeze()
    _FROZEN_BASELINE[:] = [gc.get_freeze_count()]


def release_frozen() -> bool:
    """`collect_and_freeze` again when the frozen objects have grown past the baseline (see
    FROZEN_GROWTH); nothing before the first one (the process has not started yet), nor while no stage
    froze anything since the last look."""
    if not _FROZEN_BASELINE or not _FROZEN_SINCE_CHECK[0]:
        return False
    _FROZEN_SINCE_CHECK[0] = False
    baseline = _FROZEN_BASELINE[0]
    if gc.get_freeze_count() <= max(int(baseline * FROZEN_GROWTH), baseline + FROZEN_SLACK):
        return False
    gc.unfreeze()
    collect_and_freeze()
    return True


async def serve(opts: ServeOptions) -> int:
    """The `cilia serve` process. It owns the process, so it also tunes the garbage collector: everything
    loaded at start (protobuf modules, the first snapshot) is frozen out of collections, and young
    collections run less often, the more so the more streams are held (`collector_thresholds`), since a
    full collection over thousands of streams' objects pauses the loop for ~200 ms at 2,000 proxies and
    ~600 ms at 10,000 (see bench/README.md)."""
    malloc = _tune_malloc()
    _raise_fd_limit()
    cp = ControlPlane(opts)
    cp.freeze_stages = True  # this process owns the collector
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, cp.stop)
    started = asyncio.Event()

    async def trim_memory() -> None:
        # Connections that fail their handshake (or never finish it) leave freed memory that glibc keeps;
        # giving it back keeps RSS flat under hostile connection churn.
        while malloc is not None:
            await asyncio.sleep(MALLOC_TRIM_INTERVAL_S)
            malloc.malloc_trim(0)

    async def freeze_when_started() -> None:
        await started.wait()
        collect_and_freeze()

    gc.set_threshold(*GC_THRESHOLDS)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(freeze_when_started())
        collector = tg.create_task(scale_collector(lambda: cp.cache.stream_count))
        trim = tg.create_task(trim_memory())
        await cp.run(started)
        trim.cancel()
        collector.cancel()
    return 0


def _raise_fd_limit() -> None:
    """Each xDS stream holds a socket: lift the open-file soft limit to the hard one (10,000 proxies need
    more than the common default of 1,024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            log.warning("cannot raise the open-file limit from %d to %d", soft, hard)


MALLOC_ARENA_MAX = 2
MALLOC_TRIM_INTERVAL_S = 5.0


def _tune_malloc() -> Any:
    """Cap glibc's malloc arenas (grpc's threads would each grow one) before any thread starts; returns
    libc for periodic trims, or None where that is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-8, MALLOC_ARENA_MAX)  # M_ARENA_MAX
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def load_once(paths: Sequence[str]) -> Store:
    store = Store()
    FileSource(paths, store).load()
    return store


__all__ = ["ControlPlane", "Debounce", "ServeOptions", "serve", "web"]
