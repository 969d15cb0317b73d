"""Admin HTTP: health, readiness, metrics and debug views (DESIGN §5).

`/readyz` runs named checks (`ready_checks()` of the view, when it has one): 200 when all pass, else 503.
As the Kubernetes API server's, `?verbose` lists every check (`[+]name ok` / `[-]name failed: why`) and
`?exclude=NAME` (repeatable) leaves a check out, e.g. a readinessProbe that must not depend on
`leader-election`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiohttp import web


class AdminView(Protocol):
    def healthy(self) -> bool: ...
    def ready(self) -> bool: ...
    def metrics_text(self) -> str: ...
    def proxies(self) -> dict[str, Any]: ...
    def proxy_config(self, proxy_id: str) -> dict[str, Any]: ...
    def object_statuses(self) -> list[dict[str, Any]]: ...
    def issues(self) -> list[dict[str, Any]]: ...
    def agents(self) -> dict[str, Any]: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", status=status,
                        content_type="application/json")


def make_admin_app(view: AdminView, *, debug: bool = True) -> web.Application:
    """The admin app; `debug=False` serves only /healthz, /readyz and /metrics (for probes and scrapers
    beyond loopback: nothing there shows a proxy's configuration)."""
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n" if view.healthy() else "unhealthy\n", status=200 if view.healthy() else 503)

    async def readyz(req: web.Request) -> web.Response:
        checks_of = getattr(view, "ready_checks", None)
        checks: list[tuple[str, bool, str]] = checks_of() if checks_of is not None else [("ready", view.ready(), "")]
        excluded = set(req.query.getall("exclude", []))
        unknown = excluded - {name for name, _, _ in checks}
        if unknown:
            return web.Response(text=f"unknown check(s) to exclude: {', '.join(sorted(unknown))}\n", status=400)
        run = [c for c in checks if c[0] not in excluded]
        ok = all(passed for _, passed, _ in run)
        failed = [name for name, passed, _ in run if not passed]
        if "verbose" in req.query:
            lines = [f"[+]{name} ok" if passed else f"[-]{name} failed: {detail}" for name, passed, detail in run]
            lines += [f"[~]{name} excluded" for name, _, _ in checks if name in excluded]
            lines.append("readyz check passed" if ok else "readyz check failed")
            text = "\n".join(lines) + "\n"
        else:
            text = "ready\n" if ok else f"not ready: {', '.join(failed)}\n"
        return web.Response(text=text, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        text = view.metrics_text()
        resp = web.Response(text=text, charset="utf-8")
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return resp

    async def proxies(_: web.Request) -> web.Response:
        return _json(view.proxies())

    async def config(req: web.Request) -> web.Response:
        proxy_id = req.match_info["proxy_id"]
        wait = getattr(view, "wait_config", None)
        if wait is not None:  # a role whose config is built on demand (proxyless gRPC targets)
            await wait(proxy_id)
        try:
            resp = _json(view.proxy_config(proxy_id))
            source = getattr(view, "proxy_config_source", None)
            if source is not None:
                resp.headers["X-Cilia-Config-Source"] = source(proxy_id)  # "sent" or "computed"
            return resp
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)

    async def status(_: web.Request) -> web.Response:
        return _json(view.object_statuses())

    async def issues(_: web.Request) -> web.Response:
        return _json(view.issues())

    async def agents(_: web.Request) -> web.Response:
        return _json(view.agents())

    async def ui(_: web.Request) -> web.Response:
        from cilia import __version__
        from cilia.obs.ui import CONTENT_SECURITY_POLICY, render_page

        latency = getattr(view, "latency_series", None)
        page = render_page(view.proxies(), view.object_statuses(), view.issues(),
                           latency() if latency is not None else [], version=f"cilia {__version__}")
        resp = web.Response(text=page, content_type="text/html", charset="utf-8")
        resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def security(_: web.Request) -> web.Response:
        source = getattr(view, "security", None)
        return _json(source() if source is not None else {})

    async def leader(_: web.Request) -> web.Response:
        source = getattr(view, "leader", None)
        return _json(source() if source is not None else {"enabled": False})
    async def identities(_: web.Request) -> web.Response:
        source = getattr(view, "identities", None)
        return _json(source() if source is not None else {"mesh_mtls": False, "proxies": {}})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if not debug:
        return app
    app.router.add_get("/debug/proxies", proxies)
    app.router.add_get("/debug/config/{proxy_id:.+}", config)
    app.router.add_get("/debug/status", status)
    app.router.add_get("/debug/issues", issues)
    app.router.add_get("/debug/agents", agents)
    app.router.add_get("/debug/security", security)
    app.router.add_get("/debug/leader", leader)
    app.router.add_get("/ui", ui)
    app.router.add_get("/debug/identities", identities)
    return app


async def start_admin(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = getattr(site, "_server", None)
    bound = port
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    return runner, bound
