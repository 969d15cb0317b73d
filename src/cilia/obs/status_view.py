"""Text views of `/debug/proxies` for `cilia status` (pure: JSON in, text out)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

BASE_TYPES = ("listeners", "routes", "clusters", "endpoints", "secrets")
EXCERPT = 80


def _excerpt(text: str, limit: int = EXCERPT) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _types(proxies: Mapping[str, Any]) -> list[str]:
    extra = sorted({t for p in proxies.values() for t in p.get("types", {}) if t not in BASE_TYPES})
    return [*BASE_TYPES, *extra]


def _last_nack(p: Mapping[str, Any]) -> tuple[str, str]:
    """(type, text) of the NACK that still stands, else of any earlier one, else ("", "")."""
    standing = [(t, ts["last_nack"]) for t, ts in p.get("types", {}).items()
                if ts.get("last_nack") and ts.get("state") == "NACKED"]
    if standing:
        return standing[0]
    older = [(t, ts["last_nack"]) for t, ts in p.get("types", {}).items() if ts.get("last_nack")]
    return older[0] if older else ("", "")


def status_table(proxies: Mapping[str, Any], issues: Sequence[Mapping[str, Any]] = ()) -> str:
    types = _types(proxies)
    header = ["PROXY", "ROLE", "CONNECTED", "XDS", *[t.upper() for t in types], "LAST NACK"]
    rows = [header]
    for pid, p in proxies.items():
        states = [p.get("types", {}).get(t, {}).get("state", "-") for t in types]
        nack_type, nack = _last_nack(p)
        rows.append([pid, pid.split("~", 1)[0], "yes" if p.get("connected") else "no", p.get("variant") or "-",
                     *states, f"{nack_type}: {_excerpt(nack)}" if nack else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows]
    if not proxies:
        lines.append("(no proxies have connected)")
    if issues:
        lines.append("")
        lines.append(f"{len(issues)} configuration issue(s):")
        lines += [f"  {i.get('text', i)}" for i in issues]
    return "\n".join(lines) + "\n"


def identity_table(identities: Mapping[str, Any]) -> str:
    """Mesh mTLS state and, per proxy, the workload identities it is served with their expiry."""
    if not identities.get("mesh_mtls"):
        return f"MESH mTLS: off ({identities.get('message') or 'no CA configured'})\n"
    lines = [f"MESH mTLS: on (trust domain {identities.get('trust_domain', '-')})"]
    rows = [["PROXY", "IDENTITY", "EXPIRES", "SERIAL"]]
    for pid, served in sorted((identities.get("proxies") or {}).items()):
        for s in served:
            rows.append([pid, s.get("identity", "-"), s.get("not_after", "-"), s.get("serial", "-")])
    if len(rows) == 1:
        lines.append("(no proxy carries a workload identity yet)")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=False)) + "  " + r[3] for r in rows]
    return "\n".join(lines) + "\n"


def egress_table(statuses: Sequence[Mapping[str, Any]]) -> str:
    """One row per CiliumEgressGatewayPolicy: served or not, selected pods, gateway nodes, source address."""
    rows = [["EGRESS POLICY", "ACCEPTED", "PODS", "GATEWAY NODES", "EGRESS IP"]]
    for st in statuses:
        if st.get("kind") != "CiliumEgressGatewayPolicy":
            continue
        status = st.get("status") or {}
        accepted = next((c.get("status", "-") for c in status.get("conditions") or () if c.get("type") == "Accepted"),
                        "-")
        rows.append([str(st.get("metadata", {}).get("name", "-")), str(accepted),
                     str(len(status.get("selectedPods") or ())), ",".join(status.get("gatewayNodes") or ()) or "-",
                     str(status.get("egressIP") or "-")])
    if len(rows) == 1:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] + "\n"
                   for r in rows)


# A gateway Envoy's per-policy upstream cluster `egress|POLICY|upstream` (cilia.translate.egress) counts
# the connections it opens for tunnels of that policy: one per flow, its bytes are the flow's payload.
_CX = r"upstream_cx_(active|total|tx_bytes_total|rx_bytes_total)$"
EGRESS_STATS_FILTER = r"^cluster\.egress\|.+\|upstream\." + _CX  # Envoy admin's /stats?filter=
_EGRESS_STAT = re.compile(r"^cluster\.egress\|(.+)\|upstream\." + _CX)
EGRESS_COUNTERS = {"active": "flows", "total": "total", "tx_bytes_total": "bytes_sent",
                   "rx_bytes_total": "bytes_received"}


def egress_traffic(stats: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per policy, from a gateway Envoy's `/stats?format=json`: open flows, flows so far, bytes sent to
    the destinations and received from them."""
    out: dict[str, dict[str, int]] = {}
    for entry in stats.get("stats") or ():
        if not isinstance(entry, Mapping) or "value" not in entry:
            continue  # histograms
        m = _EGRESS_STAT.match(str(entry.get("name", "")))
        if m is None:
            continue
        counters = out.setdefault(m.group(1), dict.fromkeys(EGRESS_COUNTERS.values(), 0))
        counters[EGRESS_COUNTERS[m.group(2)]] = int(entry["value"])
    return out


def egress_traffic_table(traffic: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per gateway node and policy; a gateway whose Envoy could not be read shows its error."""
    rows = [["EGRESS POLICY", "GATEWAY NODE", "FLOWS", "TOTAL", "BYTES SENT", "BYTES RECEIVED"]]
    errors = []
    for node, per in sorted(traffic.items()):
        if "error" in per:
            errors.append(f"  {node}: {per['error']}")
            continue
        for policy, c in sorted(per.get("policies", {}).items()):
            rows.append([policy, node, *(str(c.get(k, 0)) for k in EGRESS_COUNTERS.values())])
    lines = []
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
    elif traffic:
        lines = ["(no egress gateway policy is served by these Envoys)"]
    if errors:
        lines += ["egress gateway Envoy(s) not read:", *errors]
    return "".join(line + "\n" for line in lines)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def proxy_detail(pid: str, p: Mapping[str, Any]) -> str:
    lines = [
        f"Proxy:       {pid}",
        f"Role:        {pid.split('~', 1)[0]}",
        f"Connected:   {'yes' if p.get('connected') else 'no'} ({p.get('streams', 0)} stream(s))",
        f"xDS:         {p.get('variant') or '-'}",
        f"Since:       {_when(p.get('connected_since'))}",
        f"User agent:  {p.get('user_agent') or '-'}",
        "",
    ]
    header = ["TYPE", "STATE", "SENT", "ACKED", "RESOURCES", "ACKS", "NACKS"]
    rows = [header]
    for t, ts in p.get("types", {}).items():
        rows.append([t, ts.get("state", "-"), ts.get("version_sent") or "-", ts.get("version_acked") or "-",
                     str(ts.get("resources_sent", 0)), str(ts.get("acks", 0)), str(ts.get("nacks", 0))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    for t, ts in p.get("types", {}).items():
        if ts.get("rejected"):
            lines += ["", f"Rejected {t} (still in force):",
                      *[f"  {name}: {' '.join(str(text).split())}" for name, text in ts["rejected"].items()]]
        if ts.get("last_nack"):
            standing = "rejected, still in force" if ts.get("state") == "NACKED" else "since superseded"
            lines += ["", f"Last NACK of {t} (version {ts.get('last_nack_version') or '-'}, {standing}):",
                      *[f"  {line}" for line in str(ts["last_nack"]).splitlines()]]
    return "\n".join(lines) + "\n"


__all__ = ["identity_table", "leader_line", "proxy_detail", "status_table"]


def leader_line(leader: Mapping[str, Any]) -> str | None:
    """`cilia status`'s line about leader election (`/debug/leader`), loud when nobody writes status."""
    if not leader or not leader.get("enabled"):
        return None
    text = f"leader election ({leader.get('lease', '?')}): {leader.get('message', '')}"
    if not leader.get("ready", True):
        return f"WARNING: {text}; no replica writes status ({leader.get('ready_detail', '')})"
    if leader.get("error"):
        return f"WARNING: {text}"
    return text
