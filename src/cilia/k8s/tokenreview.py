"""TokenReview: the API server's word on a ServiceAccount token (audience `cilia`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from cilia.k8s.kubeapi import KubeApi, KubeApiError, Resource
from cilia.security.issuer import AUDIENCE, TokenReview

log = logging.getLogger("cilia.kube.tokenreview")

TOKENREVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", False)
TOKENREVIEW_VERBS = ("create",)
MAX_TOKEN_BYTES = 16 * 1024


def token_reviewer(api: KubeApi) -> Callable[[str], Awaitable[TokenReview]]:
    async def review(token: str) -> TokenReview:
        if not token or len(token) > MAX_TOKEN_BYTES:
            return TokenReview(False, error="empty or oversized token")
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [AUDIENCE]}}
        try:
            answer = await api.create(TOKENREVIEWS, None, body)
        except KubeApiError as exc:
            log.error("TokenReview failed: %s", exc)
            return TokenReview(False, error=f"TokenReview failed: {exc}")
        return TokenReview.from_status(answer.get("status") or {})
    return review
