"""Observation points of the xDS server, kept off the fan-out's cost.

The streams call these on every push and every ACK, so an implementation must do no more than a few
dict/int updates per call (no OpenTelemetry calls, no locks, no I/O). The default does nothing;
`cilia.obs.metrics.XdsMetrics` counts. The xDS package does not import cilia.obs: the control plane
passes an observer in.
"""

from __future__ import annotations

import time


class XdsObserver:
    """No-op observer. `change_seq` / `change_observed_at` describe the newest change batch: the app sets
    them (via `begin_change`) just before installing the world that carries it, so a push can tell a
    change-driven send from a request-driven one and time change -> ACK."""

    __slots__ = ("change_observed_at", "change_seq")

    def __init__(self) -> None:
        self.change_seq = 0
        self.change_observed_at = 0.0  # time.monotonic() of the batch's first source event

    def begin_change(self, observed_at: float | None = None) -> int:
        self.change_seq += 1
        self.change_observed_at = time.monotonic() if observed_at is None else observed_at
        return self.change_seq

    def stream_opened(self, role: str, variant: str) -> None:
        """A stream of a proxy with `role` ("node", "sidecar", ...) and `variant` ("delta"/"sotw") opened."""

    def stream_closed(self, role: str, variant: str) -> None:
        """The matching close of `stream_opened`."""

    def stream_denied(self, role: str) -> None:
        """A stream or fetch claiming a proxy of `role` was refused for the peer's identity."""

    def pushed(self, type_url: str, reason: str, nbytes: int) -> None:
        """One response written. `reason`: "initial" (first response of that type on the stream),
        "change" (a new change batch), "request" (the proxy's subscription changed or it reconnected)."""

    def acked(self, proxy_id: str, variant: str, type_url: str, sent_at: float, seq: int, version: str) -> None:
        """The proxy ACKed the response written at monotonic `sent_at` carrying change batch `seq`
        (0 when the response was not change-driven)."""

    def nacked(self, proxy_id: str, variant: str, type_url: str, sent_at: float, seq: int, error: str) -> None:
        """The proxy rejected a response; `sent_at`/`seq` as for `acked` (0 when the nonce is unknown)."""

    def access_denied(self, proxy_id: str, rule: str, route: str) -> None:
        """The proxy's RBAC refused a request: `rule` is the matched deny rule's name, or "none" when no
        allow rule matched (default deny); `route` the route name (the policies in force there)."""


__all__ = ["XdsObserver"]
