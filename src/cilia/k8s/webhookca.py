"""The leader keeps the injection webhook's `caBundle` equal to cilia's CA bundle."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from cilia.k8s.kubeapi import KubeApiError, Resource
from cilia.security.ca import CertificateAuthority

log = logging.getLogger("cilia.kube.webhookca")

MUTATING_WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", False)
WEBHOOK_CONFIG = "cilia-sidecar-injector"
WEBHOOK_CA_VERBS = ("get", "update")


def with_ca_bundle(config: dict[str, Any], bundle_b64: str) -> dict[str, Any] | None:
    """The configuration with every webhook's caBundle set, or None when nothing changes."""
    changed = False
    for hook in config.get("webhooks") or ():
        client = hook.setdefault("clientConfig", {})
        if client.get("caBundle") != bundle_b64:
            client["caBundle"] = bundle_b64
            changed = True
    return config if changed else None


async def publish_ca_bundle(kube: Any, ca_source: Callable[[], CertificateAuthority],
                            interval_s: float = 10.0) -> None:
    """While leading, make the MutatingWebhookConfiguration trust the CA (re-checked every interval)."""
    while True:
        if kube.is_leader():
            bundle = base64.b64encode(ca_source().bundle_pem).decode()
            try:
                current = await kube.api.get(MUTATING_WEBHOOKS, None, WEBHOOK_CONFIG)
                updated = with_ca_bundle(current, bundle)
                if updated is not None:
                    await kube.api.update(MUTATING_WEBHOOKS, None, WEBHOOK_CONFIG, updated)
                    log.info("set the caBundle of MutatingWebhookConfiguration %s", WEBHOOK_CONFIG)
            except KubeApiError as exc:
                log.error("cannot set the caBundle of MutatingWebhookConfiguration %s: %s", WEBHOOK_CONFIG, exc)
            await asyncio.sleep(interval_s)
            continue
        # A follower looks again when it becomes the leader, not an interval later.
        leading = getattr(kube, "leading", None)
        if isinstance(leading, asyncio.Event):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leading.wait(), interval_s)
        else:
            await asyncio.sleep(interval_s)
