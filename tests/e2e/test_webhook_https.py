"""The injection webhook over real HTTPS (test CA made here), as the API server would call it."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cilia.mesh.inject import InjectConfig, inject_pod_spec, inject_yaml
from cilia.mesh.webhook import MAX_REVIEW_BYTES, make_webhook_app, serve_webhook, webhook_port

NsMeta = tuple[Mapping[str, str], Mapping[str, str]]
NAMESPACES: dict[str, NsMeta] = {
    "shop": ({"cilia.io/mesh": "sidecar"}, {}),
    "plain": ({}, {}),
}


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("cilia.cilia-system.svc"),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server-key.pem) for a throwaway CA."""
    d = tmp_path_factory.mktemp("webhook-tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cilia test CA")])
    ca = _cert("cilia test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("cilia.cilia-system.svc", key, ca_name, ca_key, ca=False)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return d / "ca.pem", d / "server.pem", d / "server-key.pem"


class Webhook:
    """A running webhook and an HTTPS client that trusts only the test CA."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def post(self, body: bytes | Any, **kw: Any) -> tuple[int, str]:
        async with self.session.post(f"{self.url}/mutate", data=body, **kw) as resp:
            return resp.status, await resp.text()

    async def review(self, review: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        status, text = await self.post(json.dumps(review).encode(), headers=headers)
        assert status == 200, text
        out = json.loads(text)
        assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
        assert out["response"]["uid"] == review["request"]["uid"]
        return dict(out["response"])

    async def healthy(self) -> bool:
        async with self.session.get(f"{self.url}/healthz") as resp:
            return resp.status == 200 and (await resp.text()).strip() == "ok"


StartWebhook = Callable[..., Awaitable[Webhook]]


@pytest.fixture
async def start_webhook(tls_files: tuple[Path, Path, Path]) -> AsyncIterator[StartWebhook]:
    ca, cert, key = tls_files
    client_ctx = ssl.create_default_context(cafile=str(ca))
    runners: list[Any] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(cfg: InjectConfig | None = None,
                    lookup: Callable[[str], NsMeta | None] = NAMESPACES.get, **kw: Any) -> Webhook:
        app = make_webhook_app(cfg or InjectConfig(), lookup, **kw)
        runner = await serve_webhook(app, "127.0.0.1", 0, str(cert), str(key))
        runners.append(runner)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ctx), timeout=aiohttp.ClientTimeout(total=20))
        sessions.append(session)
        return Webhook(f"https://127.0.0.1:{webhook_port(runner)}", session)

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


def make_pod(name: str | None = "web", namespace: str = "shop",
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": namespace, "labels": {"app": "web"}}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = "web-7d9f-"
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [
                {"name": "web", "image": "registry.example/web:1", "ports": [{"containerPort": 8080}]}
            ],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}],
        },
    }


def make_review(obj: Any, uid: str = "6b1f0c2e-1111-4c3a-9a51-0d2d3c4e5f60", namespace: str = "shop",
                operation: str = "CREATE", kind: str = "Pod") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert isinstance(ops, list) and ops
    return ops


@pytest.mark.parametrize("name", ["web", None])
async def test_valid_review_patch_equals_inject_output(start_webhook: StartWebhook, name: str | None) -> None:
    hook = await start_webhook()
    pod = make_pod(name)
    ops = decode_patch(await hook.review(make_review(pod)))
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), ops)

    labels, annotations = NAMESPACES["shop"]
    assert patched == inject_pod_spec(pod, "shop", labels, annotations, InjectConfig())
    # ... and equals what `cilia inject` prints for the same pod and namespace
    ns_doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": dict(labels)}}
    offline = list(yaml.safe_load_all(inject_yaml(yaml.safe_dump_all([ns_doc, pod]), InjectConfig())))
    assert patched == offline[1]
    assert patched["spec"]["initContainers"][1]["name"] == "cilia-proxy"
    assert any(op["path"] == "/metadata/annotations" for op in ops)


@pytest.mark.parametrize(
    ("pod", "namespace"),
    [
        (make_pod(namespace="plain"), "plain"),  # default mode node
        (make_pod(annotations={"cilia.io/mesh": "off"}), "shop"),
        (make_pod(annotations={"cilia.io/mesh": "node"}), "shop"),
        (make_pod(namespace="unknown"), "unknown"),  # lookup answers None
    ],
)
async def test_node_and_off_get_no_patch(
    start_webhook: StartWebhook, pod: dict[str, Any], namespace: str
) -> None:
    hook = await start_webhook()
    response = await hook.review(make_review(pod, namespace=namespace))
    assert response == {"uid": response["uid"], "allowed": True}


async def test_already_injected_gets_no_patch(start_webhook: StartWebhook) -> None:
    hook = await start_webhook()
    pod = make_pod()
    injected = jsonpatch.apply_patch(pod, decode_patch(await hook.review(make_review(pod))))
    again = await hook.review(make_review(injected, uid="second"))
    assert again == {"uid": "second", "allowed": True}


async def test_non_pod_or_non_create_is_allowed_untouched(start_webhook: StartWebhook) -> None:
    hook = await start_webhook()
    update = await hook.review(make_review(make_pod(), operation="UPDATE"))
    assert update == {"uid": update["uid"], "allowed": True}
    service = await hook.review(make_review({"apiVersion": "v1", "kind": "Service"}, kind="Service"))
    assert service == {"uid": service["uid"], "allowed": True}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": ', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"", "empty body"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({**make_review(make_pod()), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
         "apiVersion must be 'admission.k8s.io/v1'"),
        (json.dumps({**make_review(make_pod()), "kind": "TokenReview"}).encode(),
         "kind must be 'AdmissionReview'"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
         "request is missing"),
        (json.dumps(make_review(make_pod(), uid="")).encode(), "request.uid is missing"),
        (json.dumps(make_review(None)).encode(), "request.object must be the Pod"),
    ],
)
async def test_malformed_reviews_get_400_and_server_keeps_running(
    start_webhook: StartWebhook, body: bytes, fragment: str
) -> None:
    hook = await start_webhook()
    status, text = await hook.post(body, headers={"Content-Type": "application/json"})
    assert status == 400
    assert fragment in text
    assert await hook.healthy()
    decode_patch(await hook.review(make_review(make_pod())))


async def test_huge_body_gets_400_and_server_keeps_running(start_webhook: StartWebhook) -> None:
    hook = await start_webhook()
    review = make_review(make_pod(annotations={"filler": "x" * (MAX_REVIEW_BYTES + 10)}))
    status, text = await hook.post(json.dumps(review).encode())
    assert status == 400 and f"over the {MAX_REVIEW_BYTES} byte limit" in text
    assert await hook.healthy()
    decode_patch(await hook.review(make_review(make_pod())))


async def test_chunked_body_over_limit_gets_400(start_webhook: StartWebhook) -> None:
    hook = await start_webhook(max_body_bytes=64 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):  # 8 x 16 KiB = 128 KiB, no Content-Length
            yield b" " * (16 * 1024)

    status, text = await hook.post(chunks())
    assert status == 400 and "over the 65536 byte limit" in text
    assert await hook.healthy()
    # a review just under the custom limit still works
    decode_patch(await hook.review(make_review(make_pod())))


def _broken_lookup(namespace: str) -> NsMeta | None:
    raise RuntimeError(f"namespace cache for {namespace} is not synced")


async def test_internal_error_fail_closed_denies(start_webhook: StartWebhook) -> None:
    hook = await start_webhook(InjectConfig(fail_open=False), _broken_lookup)
    response = await hook.review(make_review(make_pod()))
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 500
    assert "namespace cache for shop is not synced" in response["status"]["message"]


async def test_internal_error_fail_open_allows_without_patch(start_webhook: StartWebhook) -> None:
    hook = await start_webhook(InjectConfig(fail_open=True), _broken_lookup)
    response = await hook.review(make_review(make_pod()))
    assert response["allowed"] is True
    assert "patch" not in response and "patchType" not in response
    assert any("not synced" in w for w in response["warnings"])


async def test_invalid_mode_is_denied_with_the_reason(start_webhook: StartWebhook) -> None:
    hook = await start_webhook()
    response = await hook.review(make_review(make_pod(annotations={"cilia.io/mesh": "sidecars"})))
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "Pod shop/web annotation cilia.io/mesh: invalid value 'sidecars'" in response["status"]["message"]


async def test_client_without_the_ca_is_refused(start_webhook: StartWebhook) -> None:
    hook = await start_webhook()
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await plain.get(f"{hook.url}/healthz")
    assert await hook.healthy()


async def test_pod_of_a_namespace_not_seen_yet_waits_for_it(start_webhook: StartWebhook) -> None:
    """A namespace and its first Pod applied together: the Pod's review may arrive before the namespace's watch
    event. With `namespace_wait` the webhook waits for the namespace (its labels decide the mode) and injects."""
    known: dict[str, NsMeta] = {}
    waited: list[str] = []

    async def wait(ns: str) -> None:
        waited.append(ns)
        await asyncio.sleep(0.2)  # the watch event arrives
        known[ns] = NAMESPACES["shop"]

    hook = await start_webhook(lookup=known.get, namespace_wait=wait)
    ops = decode_patch(await hook.review(make_review(make_pod(namespace="fresh"), namespace="fresh")))
    assert waited == ["fresh"] and any(op["path"] == "/spec/initContainers" for op in ops)
    # Known namespaces, and requests that are not Pod creations, do not wait.
    await hook.review(make_review(make_pod(namespace="fresh"), namespace="fresh"))
    await hook.review(make_review({"kind": "Service"}, namespace="other", kind="Service"))
    assert waited == ["fresh"]
