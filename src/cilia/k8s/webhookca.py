"""The leader publishes cilia's CA bundle (public): as ConfigMap `cilia-ca-bundle` in cilia's namespace,
which node Envoys mount to verify the certificate issuer, and as the `caBundle` of the injection webhook."""

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
CONFIGMAPS = Resource("", "v1", "configmaps", True)
CA_CONFIGMAP = "cilia-ca-bundle"
CA_CONFIGMAP_VERBS = ("get", "create", "update")


def with_ca_bundle(config: dict[str, Any], bundle_b64: str) -> dict[str, Any] | None:
    """The configuration with every webhook's caBundle set, or None when nothing changes."""
    changed = False
    for hook in config.get("webhooks") or ():
        client = hook.setdefault("clientConfig", {})
        if client.get("caBundle") != bundle_b64:
            client["caBundle"] = bundle_b64
            changed = True
    return config if changed else None


async def _publish_configmap(api: Any, namespace: str, bundle_pem: str) -> None:
    try:
        current = await api.get(CONFIGMAPS, namespace, CA_CONFIGMAP)
    except KubeApiError as exc:
        if exc.status != 404:
            raise
        await api.create(CONFIGMAPS, namespace, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CA_CONFIGMAP, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "cilia"}},
            "data": {"bundle.pem": bundle_pem}})
        log.info("created ConfigMap %s/%s", namespace, CA_CONFIGMAP)
        return
    if (current.get("data") or {}).get("bundle.pem") != bundle_pem:
        current["data"] = {**(current.get("data") or {}), "bundle.pem": bundle_pem}
        await api.update(CONFIGMAPS, namespace, CA_CONFIGMAP, current)
        log.info("updated ConfigMap %s/%s", namespace, CA_CONFIGMAP)


async def publish_ca_bundle(kube: Any, ca_source: Callable[[], CertificateAuthority], namespace: str, *,
                            webhook: bool, interval_s: float = 10.0) -> None:
    """While leading, keep the ConfigMap (and, with `webhook`, the MutatingWebhookConfiguration's
    caBundle) equal to the CA bundle; re-checked every interval, so a rotation reaches both."""
    while True:
        if kube.is_leader():
            pem = ca_source().bundle_pem
            try:
                await _publish_configmap(kube.api, namespace, pem.decode())
            except KubeApiError as exc:
                log.error("cannot publish ConfigMap %s/%s: %s", namespace, CA_CONFIGMAP, exc)
            if webhook:
                try:
                    current = await kube.api.get(MUTATING_WEBHOOKS, None, WEBHOOK_CONFIG)
                    updated = with_ca_bundle(current, base64.b64encode(pem).decode())
                    if updated is not None:
                        await kube.api.update(MUTATING_WEBHOOKS, None, WEBHOOK_CONFIG, updated)
                        log.info("set the caBundle of MutatingWebhookConfiguration %s", WEBHOOK_CONFIG)
                except KubeApiError as exc:
                    log.error("cannot set the caBundle of MutatingWebhookConfiguration %s: %s", WEBHOOK_CONFIG,
                              exc)
            await asyncio.sleep(interval_s)
            continue
        # A follower looks again when it becomes the leader, not an interval later.
        leading = getattr(kube, "leading", None)
        if isinstance(leading, asyncio.Event):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leading.wait(), interval_s)
        else:
            await asyncio.sleep(interval_s)
