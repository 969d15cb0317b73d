"""A Secret referenced from a namespace cilia does not read Secrets in is named as such, not as missing."""

from __future__ import annotations

from typing import Any

import yaml

import cilia.k8s.kinds  # noqa: F401  (registers every kind)
from cilia.k8s.registry import parse_object
from cilia.k8s.store import InputSnapshot
from cilia.translate import translate
from cilia.translate.context import TranslateOptions

OBJECTS = """
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: cilia}
spec: {controller: cilia.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  ingressClassName: cilia
  tls: [{hosts: [shop.example], secretName: shop-tls}]
  rules:
  - host: shop.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: cilia}
spec: {controllerName: cilia.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  gatewayClassName: cilia
  listeners:
  - name: https
    protocol: HTTPS
    port: 443
    tls: {mode: Terminate, certificateRefs: [{name: shop-tls}]}
"""


def _translate(readable: tuple[str, ...] | None) -> tuple[list[str], dict[str, Any]]:
    snapshot = InputSnapshot.of(parse_object(d) for d in yaml.safe_load_all(OBJECTS))
    result = translate(snapshot, TranslateOptions(secret_namespaces=readable))
    ingress = [i.message for i in result.issues if i.object == "Ingress shop/web"]
    gw = next(s for s in result.statuses if s.kind == "Gateway")
    resolved = next(c for c in gw.status["listeners"][0]["conditions"] if c["type"] == "ResolvedRefs")
    return ingress, resolved


def test_secret_in_a_namespace_cilia_does_not_read() -> None:
    ingress, resolved = _translate(("cilia-secrets",))
    hint = "Secret shop/shop-tls is not readable: cilia reads Secrets only in cilia-secrets (--secrets-namespace"
    assert any(m.startswith(hint) for m in ingress), ingress
    assert resolved["status"] == "False" and hint in resolved["message"]


def test_secret_missing_where_cilia_reads_or_in_file_mode() -> None:
    for readable in (None, ("shop", "cilia-secrets")):
        ingress, resolved = _translate(readable)
        assert any(m.startswith("Secret shop/shop-tls not found") for m in ingress), ingress
        assert resolved["message"].endswith("certificateRef shop/shop-tls: Secret not found")
