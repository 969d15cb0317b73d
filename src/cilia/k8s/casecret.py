"""The CA in Kubernetes mode: the Secret `cilia-ca` in cilia's namespace.

Any replica that finds it missing creates it; creation is atomic in the API server, so when two race the
loser gets 409 and reads the winner's. Every replica re-reads it periodically, which is how a rotated CA
(written to the Secret by `cilia ca rotate --kubernetes` or by hand) reaches all of them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass

from cilia.k8s.kubeapi import KubeApi, KubeApiError, Resource
from cilia.security.ca import CAError, CertificateAuthority, new_ca

log = logging.getLogger("cilia.kube.ca")

SECRETS = Resource("", "v1", "secrets", True)
CA_SECRET_VERBS = ("get", "create")


@dataclass(frozen=True, slots=True)
class CaSecretRef:
    namespace: str = "cilia-system"
    name: str = "cilia-ca"


def _decode(obj: dict[str, object], ref: CaSecretRef) -> CertificateAuthority:
    data = obj.get("data")
    if not isinstance(data, dict):
        raise CAError(f"Secret {ref.namespace}/{ref.name}: data is missing")
    try:
        raw = {str(k): base64.b64decode(str(v)) for k, v in data.items()}
    except ValueError as exc:
        raise CAError(f"Secret {ref.namespace}/{ref.name}: {exc}") from None
    return CertificateAuthority.from_secret_data(raw, f"Secret {ref.namespace}/{ref.name}")


async def load_or_create_ca(api: KubeApi, ref: CaSecretRef, trust_domain: str) -> CertificateAuthority:
    try:
        return _decode(await api.get(SECRETS, ref.namespace, ref.name), ref)
    except KubeApiError as exc:
        if exc.status != 404:
            raise
    ca = new_ca(trust_domain)
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": ref.name, "namespace": ref.namespace,
                         "labels": {"app.kubernetes.io/part-of": "cilia"}},
            "data": {k: base64.b64encode(v).decode() for k, v in ca.secret_data().items()}}
    try:
        await api.create(SECRETS, ref.namespace, body)
        log.info("created the CA Secret %s/%s (trust domain %s)", ref.namespace, ref.name, trust_domain)
        return ca
    except KubeApiError as exc:
        if exc.status != 409:
            raise
    return _decode(await api.get(SECRETS, ref.namespace, ref.name), ref)


class CaHolder:
    """The current CA, refreshed from the Secret; `__call__` is a `ServerTls` CA source."""

    def __init__(self, api: KubeApi, ref: CaSecretRef, ca: CertificateAuthority) -> None:
        self.api = api
        self.ref = ref
        self.ca = ca

    def __call__(self) -> CertificateAuthority:
        return self.ca

    async def run(self, interval_s: float = 30.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.ca = _decode(await self.api.get(SECRETS, self.ref.namespace, self.ref.name), self.ref)
            except (KubeApiError, CAError) as exc:
                log.error("cannot re-read the CA Secret %s/%s, keeping the current CA: %s",
                          self.ref.namespace, self.ref.name, exc)
