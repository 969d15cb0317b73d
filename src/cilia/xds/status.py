"""Per-proxy protocol status: what was sent, what was ACKed, and the last NACK."""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from cilia.render.resources import SHORT_NAMES


@dataclass(slots=True)
class TypeStatus:
    version_sent: str = ""
    nonce_sent: str = ""
    version_acked: str = ""
    last_nack: str = ""
    last_nack_version: str = ""
    last_nack_time: float = 0.0
    nacks: int = 0
    acks: int = 0
    sent_time: float = 0.0
    resources_sent: int = 0
    # Resources the proxy rejected and still does not hold as sent, each with Envoy's words about it. A
    # Delta proxy is sent only what changed, so a later ACK (of other resources) does not end an earlier
    # rejection; a new version of the resource that is ACKed, or its removal, does.
    rejected: dict[str, str] = field(default_factory=dict)
    unattributed: str = ""  # a standing NACK whose text names none of the several resources it answered

    @property
    def state(self) -> str:
        if not self.version_sent:
            return "NOT_SENT"
        if (self.last_nack and self.last_nack_version == self.version_sent) or self.rejected:
            return "NACKED"
        if self.version_acked == self.version_sent:
            return "SYNCED"
        return "STALE"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state, "version_sent": self.version_sent, "version_acked": self.version_acked,
            "nonce_sent": self.nonce_sent, "resources_sent": self.resources_sent,
            "last_nack": self.last_nack or None, "last_nack_version": self.last_nack_version or None,
            "nacks": self.nacks, "acks": self.acks,
            **({"rejected": dict(sorted(self.rejected.items()))} if self.rejected else {}),
        }

    def settle(self, carried: tuple[Collection[str], bool] | None, error: str) -> None:
        """The proxy's answer (`error` empty: ACK) to a response that carried the resources `carried[0]`;
        `carried[1]`: that response was the whole set, so what it lacks is gone. None: not known."""
        names, complete = carried if carried is not None else ((), False)
        if complete:
            for n in [n for n in self.rejected if n not in names]:
                del self.rejected[n]
        if not error:
            for n in names:
                self.rejected.pop(n, None)
            self.unattributed = ""
            return
        named = {n for n in names if mentions(error, n)}
        if named:
            # Envoy applies what it accepts of a listener or cluster update and names what it rejects.
            for n in names:
                if n in named:
                    self.rejected[n] = about(error, n, names)
                else:
                    self.rejected.pop(n, None)
        elif len(names) == 1:
            (n,) = names
            self.rejected[n] = error.strip()
        else:
            self.unattributed = error.strip()

    def forget(self, names: Iterable[str]) -> None:
        """These resources were removed from the proxy: their rejection is over."""
        for n in names:
            self.rejected.pop(n, None)


def mentions(text: str, name: str) -> bool:
    """Whether Envoy's error text names the resource `name` (not merely a longer name containing it)."""
    return bool(name) and re.search(r"(?<![\w./-])" + re.escape(name) + r"(?![\w./-]|:\S)", text) is not None


def about(text: str, name: str, names: Collection[str] = ()) -> str:
    """What Envoy's error text says about `name`. Envoy lists rejected resources as `NAME: reason`,
    joined by newlines (listeners) or commas (clusters): the reason after `name`, up to the next of
    `names`; else the lines that mention it; else the whole text."""
    starts = sorted((m.start(), m.end(), n) for n in {*names, name} if n
                    for m in re.finditer(r"(?<![\w./-])" + re.escape(n) + r": ", text))
    for i, (_, end, n) in enumerate(starts):
        if n == name:
            stop = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            reason = text[end:stop].strip().rstrip(",").strip()
            if reason:
                return reason
    lines = [line.strip() for line in text.splitlines() if mentions(line, name)]
    return " ".join(lines) if lines else text.strip()


@dataclass(slots=True)
class ProxyStatus:
    proxy_id: str
    streams: int = 0
    variant: str = ""  # "delta" or "sotw"
    connected_since: float = 0.0
    last_seen: float = 0.0
    user_agent: str = ""
    types: dict[str, TypeStatus] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)  # what the client reports of itself (agents)
    node: Any = None  # the envoy.config.core.v3.Node of the latest stream's first request (for CSDS)
    peer: dict[str, Any] = field(default_factory=dict)  # the latest stream's client certificate (mTLS)

    def type(self, type_url: str) -> TypeStatus:
        ts = self.types.get(type_url)
        if ts is None:
            ts = self.types[type_url] = TypeStatus()
        return ts

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.streams > 0, "streams": self.streams, "variant": self.variant,
            "connected_since": self.connected_since or None, "user_agent": self.user_agent,
            "types": {SHORT_NAMES.get(t, t): ts.as_dict() for t, ts in sorted(self.types.items())},
            **({"reported": self.reported} if self.reported else {}),
            **({"peer": self.peer} if self.peer else {}),
        }


class StatusRegistry:
    """Status of every proxy that has connected. Disconnected ones stay, marked so, for
    `forget_after_s`; beyond `max_disconnected` the oldest go first, so pod churn cannot grow it."""

    def __init__(self, forget_after_s: float = 3600.0, max_disconnected: int = 10_000) -> None:
        self.proxies: dict[str, ProxyStatus] = {}
        self.forget_after_s = forget_after_s
        self.max_disconnected = max_disconnected
        self._gone: dict[str, float] = {}  # proxy id -> when its last stream closed, oldest first

    def get(self, proxy_id: str) -> ProxyStatus:
        ps = self.proxies.get(proxy_id)
        if ps is None:
            ps = self.proxies[proxy_id] = ProxyStatus(proxy_id)
        return ps

    def connected(self, proxy_id: str, variant: str, user_agent: str) -> ProxyStatus:
        self._gone.pop(proxy_id, None)
        self._prune(time.time())
        ps = self.get(proxy_id)
        if ps.streams == 0:
            ps.connected_since = time.time()
            ps.types.clear()  # a new connection starts a new protocol history
        ps.streams += 1
        ps.variant = variant
        ps.user_agent = user_agent
        return ps

    def disconnected(self, proxy_id: str) -> None:
        ps = self.proxies.get(proxy_id)
        if ps is not None:
            ps.streams = max(0, ps.streams - 1)
            if ps.streams == 0:
                self._gone[proxy_id] = time.time()

    def _prune(self, now: float) -> None:
        while self._gone:
            pid, when = next(iter(self._gone.items()))
            if len(self._gone) <= self.max_disconnected and now - when < self.forget_after_s:
                break
            del self._gone[pid]
            self.proxies.pop(pid, None)

    def as_dict(self) -> dict[str, Any]:
        return {pid: ps.as_dict() for pid, ps in sorted(self.proxies.items())}
