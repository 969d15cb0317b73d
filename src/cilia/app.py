"""Wiring: sources -> store -> translate -> render -> xDS cache, plus admin. The only place that starts tasks."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cilia.diagnostics import Issue
from cilia.identity import ProxyId
from cilia.k8s.filesource import FileSource
from cilia.k8s.store import InputSnapshot, Store
from cilia.obs.admin import make_admin_app, start_admin
from cilia.render.dump import proxy_config_json
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from cilia.translate import ENDPOINT_KINDS, TranslationResult, translate
from cilia.translate.context import TranslateOptions
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
    xds_address: str = "127.0.0.1:18000"
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


class ControlPlane:
    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self.store = Store()
        self.cache = ConfigCache()
        self.status = StatusRegistry()
        self.xds = XdsServer(self.cache, self.status, opts.limits)
        self.render_cache = ResourceCache()
        self.result: TranslationResult | None = None
        self.render_issues: tuple[Issue, ...] = ()
        self.counters = Counters()
        self.admin_port = 0
        self.xds_port = 0
        self.webhook_port = 0
        self._changed = asyncio.Event()
        self._first_change = 0.0
        self._last_change = 0.0
        self._changed_kinds: set[str] = set()
        self._started = False
        self._stop = asyncio.Event()
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
        self._changed.set()

    def _build(self, snapshot: InputSnapshot) -> tuple[TranslationResult, RenderedWorld]:
        """Translate and render; pure apart from the render cache, so it may run off the event loop."""
        result = translate(snapshot, self.opts.translate, self.result)
        return result, render_world(result.ir, self.render_cache, snapshot.revision)

    def rebuild(self) -> None:
        t0 = time.perf_counter()
        snapshot = self.store.snapshot()
        self._publish(snapshot, *self._build(snapshot), t0)

    async def rebuild_async(self) -> None:
        """Rebuild in a worker thread so that xDS streams keep being served meanwhile."""
        t0 = time.perf_counter()
        snapshot = self.store.snapshot()
        result, world = await asyncio.to_thread(self._build, snapshot)
        self._publish(snapshot, result, world, t0)

    def _publish(self, snapshot: InputSnapshot, result: TranslationResult, world: RenderedWorld, t0: float) -> None:
        self.result = result
        self.render_issues = world.issues
        self.cache.set_world(world)
        dt = time.perf_counter() - t0
        self.counters.rebuilds += 1
        self.counters.rebuild_seconds_total += dt
        self.counters.last_rebuild_seconds = dt
        for issue in world.issues:
            log.warning("%s", issue)
        if self.kube is not None:
            self.kube.after_rebuild(self.result.statuses, self.all_issues())
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
            self._changed.clear()
            self._changed_kinds.clear()
            try:
                await self.rebuild_async()
            except Exception:
                log.exception("rebuild failed; the previous configuration stays in place")

    # -- run -------------------------------------------------------------------------------------------
    async def run(self, sources_ready: asyncio.Event | None = None) -> None:
        file_source = FileSource(self.opts.paths, self.store) if self.opts.paths else None
        if file_source is not None:
            file_source.load()
        if self.opts.kubernetes is not None:
            from cilia.k8s.kubemode import KubeMode

            self.kube = await KubeMode.connect(self.store, self.opts.kubernetes,
                                               on_watch_restart=self._watch_restarted)
            await self.kube.initial_sync()
        self._changed.clear()
        self._changed_kinds.clear()
        self.rebuild()
        xhost, xport = split_hostport(self.opts.xds_address)
        self.xds_port = await self.xds.start(f"{xhost}:{xport}" if ":" not in xhost else f"[{xhost}]:{xport}")
        ahost, aport = split_hostport(self.opts.admin_address)
        runner, self.admin_port = await start_admin(make_admin_app(self), ahost, aport)
        webhook_runner = await self._start_webhook()
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
                tg.create_task(self._wait_stop())
        except* _Stopped:
            pass
        finally:
            await self.xds.stop()
            await runner.cleanup()
            if webhook_runner is not None:
                await webhook_runner.cleanup()
            if self.kube is not None:
                await self.kube.close()

    def _watch_restarted(self, kind: str, reason: str) -> None:
        key = "kube_watch_restarts_total"
        self.counters.extra[key] = self.counters.extra.get(key, 0) + 1

    async def _start_webhook(self) -> web.AppRunner | None:
        if not self.opts.webhook_address:
            return None
        from cilia.mesh.webhook import make_webhook_app, serve_webhook, webhook_port

        assert self.opts.tls_cert and self.opts.tls_key and self.opts.inject is not None
        host, port = split_hostport(self.opts.webhook_address)
        runner = await serve_webhook(make_webhook_app(self.opts.inject, self.namespace_meta), host, port,
                                     self.opts.tls_cert, self.opts.tls_key)
        self.webhook_port = webhook_port(runner)
        log.info("injection webhook listening on %s:%d", host, self.webhook_port)
        return runner

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
        return self._started and self.cache.ready

    def all_issues(self) -> tuple[Issue, ...]:
        return (self.result.issues if self.result else ()) + self.render_issues

    def issues(self) -> list[dict[str, Any]]:
        return [{"severity": i.severity, "location": i.location, "object": i.object, "field": i.field,
                 "message": i.message, "text": str(i)} for i in self.all_issues()]

    def proxies(self) -> dict[str, Any]:
        return self.status.as_dict()

    def proxy_config(self, proxy_id: str) -> dict[str, Any]:
        try:
            proxy = ProxyId.parse(proxy_id)
        except Exception as exc:
            raise ValueError(str(exc)) from None
        return proxy_config_json(self.cache.resources_for(proxy))

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
        c = self.counters
        by_role: dict[str, int] = {}
        for pid, ps in self.status.proxies.items():
            if ps.streams:
                role = pid.split("~", 1)[0]
                by_role[role] = by_role.get(role, 0) + 1
        lines = [
            "# HELP cilia_rebuilds_total Configuration rebuilds.", "# TYPE cilia_rebuilds_total counter",
            f"cilia_rebuilds_total {c.rebuilds}",
            "# HELP cilia_rebuild_duration_seconds_sum Time spent translating and rendering.",
            "# TYPE cilia_rebuild_duration_seconds_sum counter",
            f"cilia_rebuild_duration_seconds_sum {c.rebuild_seconds_total:.6f}",
            "# HELP cilia_source_events_total Changes seen from sources.", "# TYPE cilia_source_events_total counter",
            f"cilia_source_events_total {c.source_events}",
            "# HELP cilia_xds_streams Open xDS streams.", "# TYPE cilia_xds_streams gauge",
            f"cilia_xds_streams {self.xds.active_streams}",
            "# HELP cilia_connected_proxies Connected proxies by role.", "# TYPE cilia_connected_proxies gauge",
        ]
        lines += [f'cilia_connected_proxies{{role="{r}"}} {n}' for r, n in sorted(by_role.items())]
        lines += ["# HELP cilia_config_issues Problems found in the input.", "# TYPE cilia_config_issues gauge",
                  f"cilia_config_issues {len(self.all_issues())}"]
        lines += [f"cilia_{k} {v:g}" for k, v in sorted(c.extra.items())]
        return "\n".join(lines) + "\n"


class _Stopped(Exception):
    pass


async def serve(opts: ServeOptions) -> int:
    cp = ControlPlane(opts)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, cp.stop)
    await cp.run()
    return 0


def load_once(paths: Sequence[str]) -> Store:
    store = Store()
    FileSource(paths, store).load()
    return store


__all__ = ["ControlPlane", "Debounce", "ServeOptions", "serve", "web"]
