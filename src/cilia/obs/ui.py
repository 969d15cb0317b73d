"""The admin page (`/ui`): one server-rendered HTML page over the same views as `/debug/*`.

Read-only, self-contained (inline CSS, an inline SVG chart, a few lines of script that re-fetch the page and
swap its body), so it works offline and behind any port-forward. Pure: data in, HTML out.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

BASE_TYPES = ("listeners", "routes", "clusters", "endpoints", "secrets")
REFRESH_S = 1.0
# The page loads nothing from anywhere: scripts and styles are inline, the chart is inline SVG.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:18px;margin:0} header span{color:#aab3c2;font-size:12px}
main{padding:12px 20px} section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 14px;
padding:10px 14px} h2{font-size:15px;margin:2px 0 8px} table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-size:12px;color:#5a6576;font-weight:600} td.msg{font-family:ui-monospace,monospace;font-size:12px;
white-space:pre-wrap;word-break:break-word;max-width:60ch} .st{font-size:11px;font-weight:600;padding:1px 6px;
border-radius:3px} .SYNCED,.True{background:#d7f2de;color:#14632c} .NACKED,.False{background:#fbd9d7;color:#8a1c13}
.STALE,.Unknown{background:#fdf0c8;color:#725b00} .NOT_SENT,.none{background:#eef0f3;color:#5a6576}
.muted{color:#7b8595} .error{color:#8a1c13} .warning{color:#725b00} svg text{font-size:10px;fill:#5a6576}
"""

_SCRIPT = """
(function(){const ms=%d;setInterval(async()=>{try{const r=await fetch(location.href,{cache:"no-store"});
const d=new DOMParser().parseFromString(await r.text(),"text/html");const m=d.getElementById("main");
if(r.ok&&m){document.getElementById("main").replaceWith(m);}}catch(e){}},ms);})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(state: str) -> str:
    return f'<span class="st {_e(state)}">{_e(state)}</span>'


def _types(proxies: Mapping[str, Any]) -> list[str]:
    extra = sorted({t for p in proxies.values() for t in p.get("types", {}) if t not in BASE_TYPES})
    return [*BASE_TYPES, *extra]


def proxies_section(proxies: Mapping[str, Any]) -> str:
    types = _types(proxies)
    head = "".join(f"<th>{_e(t)}</th>" for t in ("proxy", "role", "xDS", "connected", *types, "last NACK"))
    rows = []
    for pid, p in sorted(proxies.items()):
        cells = [f"<td>{_e(pid)}</td>", f"<td>{_e(pid.split('~', 1)[0])}</td>",
                 f"<td>{_e(p.get('variant') or '-')}</td>",
                 f"<td>{'yes' if p.get('connected') else '<span class=muted>no</span>'}</td>"]
        nack = ""
        for t in types:
            ts = p.get("types", {}).get(t)
            cells.append(f"<td>{_badge(ts.get('state', '-'))}</td>" if ts else "<td class=muted>-</td>")
            if ts and ts.get("last_nack") and (not nack or ts.get("state") == "NACKED"):
                standing = "" if ts.get("state") == "NACKED" else " (superseded)"
                nack = f"{t}{standing}: {ts['last_nack']}"
        cells.append(f'<td class="msg">{_e(nack) if nack else "-"}</td>')
        rows.append(f'<tr data-proxy="{_e(pid)}">{"".join(cells)}</tr>')
    body = "".join(rows) or f'<tr><td colspan="{len(types) + 5}" class=muted>no proxy has connected</td></tr>'
    return f'<section id="proxies"><h2>Proxies ({len(proxies)})</h2><table><tr>{head}</tr>{body}</table></section>'


def _conditions(status: Any, path: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    """Every condition in a status stanza, with where it sits (`parents[0]`, `listeners[http]`, ...)."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(status, Mapping):
        for key, value in status.items():
            if key == "conditions" and isinstance(value, list):
                out += [(path, c) for c in value if isinstance(c, Mapping)]
            else:
                out += _conditions(value, f"{path}.{key}" if path else key)
    elif isinstance(status, list):
        for i, item in enumerate(status):
            label = item.get("name") if isinstance(item, Mapping) and isinstance(item.get("name"), str) else i
            out += _conditions(item, f"{path}[{label}]")
    return out


def _object_ref(st: Mapping[str, Any]) -> str:
    md = st.get("metadata", {})
    name = f"{md.get('namespace')}/{md.get('name')}" if md.get("namespace") else str(md.get("name"))
    return f"{st.get('kind')} {name}"


def objects_section(statuses: Sequence[Mapping[str, Any]], issues: Sequence[Mapping[str, Any]]) -> str:
    by_object: dict[str, list[Mapping[str, Any]]] = {}
    for issue in issues:
        by_object.setdefault(str(issue.get("object", "")), []).append(issue)
    rows = []
    shown: set[str] = set()
    for st in sorted(statuses, key=_object_ref):
        ref = _object_ref(st)
        shown.add(ref)
        conds = _conditions(st.get("status", {}))
        lines = []
        for where, c in conds:
            reason = f" {c.get('reason')}" if c.get("reason") else ""
            at = f'<span class=muted>{_e(where)}</span> ' if where else ""
            message = f": {_e(c.get('message'))}" if c.get("message") else ""
            lines.append(f"{at}{_e(c.get('type'))} {_badge(str(c.get('status', 'Unknown')))}{_e(reason)}{message}")
        if not conds:
            lines.append(f'<span class=muted>{_e(_status_summary(st.get("status", {})))}</span>')
        for issue in by_object.get(ref, ()):
            lines.append(f'<span class="{_e(issue.get("severity", "error"))}">{_e(issue.get("severity"))}</span> '
                         f'{_e(issue.get("field") or "")} {_e(issue.get("message"))}')
        gen = st.get("metadata", {}).get("generation")
        rows.append(f'<tr data-object="{_e(ref)}"><td>{_e(ref)}</td><td>{_e(gen if gen is not None else "-")}</td>'
                    f'<td class="msg">{"<br>".join(lines)}</td></tr>')
    others = [i for ref, items in sorted(by_object.items()) if ref not in shown for i in items]
    for issue in others:
        rows.append(f'<tr data-object="{_e(issue.get("object", ""))}"><td>{_e(issue.get("object") or "-")}</td>'
                    f'<td>-</td><td class="msg"><span class="{_e(issue.get("severity", "error"))}">'
                    f'{_e(issue.get("severity"))}</span> {_e(issue.get("text"))}</td></tr>')
    body = "".join(rows) or '<tr><td colspan="3" class=muted>no objects report status</td></tr>'
    return (f'<section id="objects"><h2>Objects ({len(statuses)}; {len(issues)} issue(s))</h2><table>'
            f"<tr><th>object</th><th>generation</th><th>conditions and issues</th></tr>{body}</table></section>")


def _status_summary(status: Any) -> str:
    if not status:
        return "(no status)"
    text = str(status)
    return text if len(text) < 160 else text[:157] + "..."


def _fmt_seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def latency_section(series: Sequence[Mapping[str, float]], minutes: int = 60) -> str:
    """An inline SVG: per minute of the last hour, p50 and p99 of change -> ACK on a log scale (1 ms..10 s)."""
    w, h, left, right, top, bottom = 640, 170, 48, 10, 10, 24
    pw, ph = w - left - right, h - top - bottom
    lo, hi = math.log10(0.001), math.log10(10.0)

    def x(minutes_ago: float) -> float:
        return left + pw * (1 - (minutes_ago + 0.5) / minutes)

    def y(seconds: float) -> float:
        v = min(max(math.log10(max(seconds, 1e-6)), lo), hi)
        return top + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg id="latency-chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" role="img" aria-label="change to ACK latency, last hour">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#dde1e7"/>']
    for label, sec in (("1 ms", 0.001), ("10 ms", 0.01), ("100 ms", 0.1), ("1 s", 1.0), ("10 s", 10.0)):
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(sec):.1f}" y2="{y(sec):.1f}" stroke="#eef0f3"/>'
                     f'<text x="{left - 4}" y="{y(sec) + 3:.1f}" text-anchor="end">{label}</text>')
    for m in (60, 45, 30, 15, 0):
        parts.append(f'<text x="{x(m - 0.5):.1f}" y="{h - 8}" text-anchor="middle">'
                     f'{"now" if m == 0 else f"-{m} min"}</text>')
    for key, color in (("p99", "#c0392b"), ("p50", "#2874a6")):
        pts = [(x(s["minutes_ago"]), y(s[key])) for s in series]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                         f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}"/>')
        parts += [f'<circle class="{key}" cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"/>' for a, b in pts]
    parts.append(f'<text x="{left + 6}" y="{top + 12}" style="fill:#2874a6">p50</text>'
                 f'<text x="{left + 32}" y="{top + 12}" style="fill:#c0392b">p99</text></svg>')
    total = int(sum(s["count"] for s in series))
    if total:
        last = series[-1]
        summary = (f'<p id="latency-summary">{total} ACK(s) of changes in the last hour; latest minute: '
                   f'p50 {_fmt_seconds(last["p50"])}, p99 {_fmt_seconds(last["p99"])}, '
                   f'max {_fmt_seconds(last["max"])} ({int(last["count"])} ACKs)</p>')
    else:
        summary = '<p id="latency-summary" class=muted>no change has been ACKed in the last hour</p>'
    return f'<section id="latency"><h2>Change &rarr; ACK latency, last hour</h2>{"".join(parts)}{summary}</section>'


def render_page(proxies: Mapping[str, Any], statuses: Sequence[Mapping[str, Any]],
                issues: Sequence[Mapping[str, Any]], latency: Sequence[Mapping[str, float]], *,
                version: str = "", now: float | None = None, refresh_s: float = REFRESH_S) -> str:
    stamp = datetime.datetime.fromtimestamp(now, tz=datetime.UTC) if now is not None else datetime.datetime.now(
        datetime.UTC)
    nacked = sum(1 for p in proxies.values() for t in p.get("types", {}).values() if t.get("state") == "NACKED")
    connected = sum(1 for p in proxies.values() if p.get("connected"))
    main = (f'<main id="main"><p class=muted>{connected} connected proxy(ies), {nacked} NACKED type(s), '
            f'{len(issues)} issue(s) &middot; updated {stamp.strftime("%Y-%m-%d %H:%M:%S")} UTC</p>'
            f"{proxies_section(proxies)}{objects_section(statuses, issues)}{latency_section(latency)}</main>")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1"><title>cilia</title>'
            f"<style>{_CSS}</style></head><body><header><h1>cilia</h1><span>{_e(version)}</span>"
            f"<span>read-only; refreshes every {refresh_s:g} s; JSON at /debug/proxies, /debug/status, "
            "/debug/issues</span>"
            f"</header>{main}<script>{_SCRIPT % int(refresh_s * 1000)}</script></body></html>")


__all__ = ["CONTENT_SECURITY_POLICY", "render_page"]
