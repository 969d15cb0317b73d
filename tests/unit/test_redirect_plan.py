"""build_plan: policy validation into map contents (pure; cgroups resolved by a fake or a tmp dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cilia.api import redirect_v1 as api
from cilia.bpf.policy import (
    MODE_NODE,
    MODE_SIDECAR,
    Endpoint,
    InboundPlan,
    build_plan,
    make_resolver,
)

ROOT = "/cg"
PROXY = Endpoint("127.0.0.1", 15001)
IDS = {"/cg/proxy": 1, "/cg/a": 2, "/cg/b": 3, "/cg/b-sc": 4, "/cg/c": 5}


def resolve(rel: str, uid: str) -> str:
    path = f"{ROOT}/{rel}" if rel else f"{ROOT}/uid-{uid}"
    if path not in IDS:
        raise LookupError(f"no cgroup {rel!r} under {ROOT}")
    return path


def plan(policy: object):
    return build_plan(policy, resolve, PROXY, "/cg/proxy", 1, cgroup_id_of=IDS.__getitem__)


def pod(name: str, cg: str, *ips: str, **kw: object) -> object:
    return api.MeshPod(namespace="ns", name=name, cgroup_path=cg, pod_ips=list(ips), **kw)


def svc(name: str, vip: str, port: int, **kw: object) -> object:
    return api.MeshService(namespace="ns", name=name, vip=vip, port=port, **kw)


def test_node_and_sidecar_pods() -> None:
    r = plan(
        api.NodeRedirectPolicy(
            node_name="n",
            pods=[
                pod("a", "a", "127.1.0.1"),
                pod("b", "b", "127.1.0.2", mode=api.SIDECAR, sidecar_cgroup_path="b-sc"),
            ],
            services=[svc("web", "127.96.0.10", 80), svc("dns", "127.96.0.53", 53, protocol=api.UDP)],
        )
    )
    assert r.errors == ()
    p = r.plan
    assert p.services == frozenset({Endpoint("127.96.0.10", 80)})
    assert p.skipped_services == 1
    assert [(x.ref, x.cgroup_id, x.mode, x.proxy) for x in p.pods] == [
        ("ns/a", 2, MODE_NODE, PROXY),
        ("ns/b", 3, MODE_SIDECAR, Endpoint("127.0.0.1", 15001)),
    ]
    assert [(x.cgroup, x.cgroup_id) for x in p.proxies] == [("/cg/proxy", 1), ("/cg/b-sc", 4)]
    assert p.inbound == (InboundPlan("127.1.0.2", 0, Endpoint("127.1.0.2", 15006), 4),)
    assert p.cgroups() == {"/cg/a": "pod", "/cg/b": "pod", "/cg/proxy": "proxy", "/cg/b-sc": "proxy"}


def test_policy_proxy_address_overrides_the_flag() -> None:
    r = plan(
        api.NodeRedirectPolicy(
            node_name="n", proxy_address="127.0.0.9", proxy_port=16001, pods=[pod("a", "a")]
        )
    )
    assert r.plan.pods[0].proxy == Endpoint("127.0.0.9", 16001)


def test_bad_objects_are_left_out_with_named_errors() -> None:
    r = plan(
        api.NodeRedirectPolicy(
            node_name="n",
            pods=[
                pod("a", "a", "127.1.0.1"),
                pod("ghost", "missing"),
                pod("dup-ip", "c", "127.1.0.1"),
                pod("bad-ip", "c", "not-an-ip"),
                pod("again", "a"),
                pod("sc", "b", mode=api.SIDECAR),
            ],
            services=[
                svc("web", "127.96.0.10", 80),
                svc("web2", "127.96.0.10", 80),
                svc("ok", "127.96.0.11", 80),
                svc("loop", "127.0.0.1", 15001),
                svc("podip", "127.1.0.1", 80),
                svc("port", "127.96.0.12", 70000),
                svc("v6", "::1", 80),
            ],
        )
    )
    text = "\n".join(r.errors)
    assert "pod ns/ghost: no cgroup 'missing'" in text
    assert "pod ns/dup-ip: pod IP 127.1.0.1 is already used by ns/a" in text
    assert "pod ns/bad-ip: pod ns/bad-ip pod_ips: 'not-an-ip' is not an IPv4 address" in text
    assert "pod ns/again: cgroup a is already used by ns/a" in text
    assert "pod ns/sc: sidecar mode needs sidecar_cgroup_path" in text
    assert "service ns/web2: VIP 127.96.0.10:80 conflicts with service ns/web; both left out" in text
    assert "service ns/loop: VIP 127.0.0.1:15001 is a proxy capture address" in text
    assert "service ns/podip: VIP 127.1.0.1 is the IP of pod ns/a" in text
    assert "service ns/port: service ns/port port: port 70000 is out of range 1-65535" in text
    assert "service ns/v6: service ns/v6 vip: '::1' is not an IPv4 address" in text
    assert len(r.errors) == 10
    assert [p.ref for p in r.plan.pods] == ["ns/a"]
    assert r.plan.services == frozenset({Endpoint("127.96.0.11", 80)})


def test_resolver_on_a_directory_tree(tmp_path: Path) -> None:
    (tmp_path / "kubepods" / "burstable" / "pod1234-ab").mkdir(parents=True)
    (tmp_path / "kubepods" / "burstable" / "pod1234-ab" / "cgroup.procs").write_text("")
    (tmp_path / "kubepods.slice" / "kubepods-besteffort-pod99_aa.slice").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    res = make_resolver(str(tmp_path))
    assert res("kubepods/burstable/pod1234-ab", "") == str(tmp_path / "kubepods/burstable/pod1234-ab")
    assert res("", "1234-ab") == str(tmp_path / "kubepods/burstable/pod1234-ab")
    assert res("", "99-aa") == str(tmp_path / "kubepods.slice/kubepods-besteffort-pod99_aa.slice")
    with pytest.raises(LookupError, match="outside the cgroup root"):
        res("../etc", "")
    with pytest.raises(LookupError, match="no cgroup 'outside'"):
        res("outside", "")  # a directory, but no cgroup (no cgroup.procs)
    with pytest.raises(LookupError, match="no cgroup for pod uid 42"):
        res("", "42")
    with pytest.raises(LookupError, match="neither"):
        res("", "")


def test_service_listener_ports() -> None:
    r = plan(api.NodeRedirectPolicy(node_name="n", pods=[pod("a", "a")], services=[
        svc("lb", "127.96.0.30", 80, listener_port=13139), svc("web", "127.96.0.10", 80),
        svc("bad", "127.96.0.40", 80, listener_port=70000)]))
    assert r.plan.listener_ports == ((Endpoint("127.96.0.30", 80), 13139),)
    assert r.plan.services == frozenset({Endpoint("127.96.0.30", 80), Endpoint("127.96.0.10", 80)})
    assert any("service ns/bad" in e and "listener_port" in e for e in r.errors)
