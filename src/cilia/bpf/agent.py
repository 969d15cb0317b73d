"""`cilia agent`: the node agent that steers mesh pods' traffic into the proxy with eBPF.

It loads the redirect programs (datapath.py), subscribes over Delta ADS to the node's
`cilia.redirect.v1.NodeRedirectPolicy` (node.id `agent~NODE`, resource name NODE), applies each
version to the maps and cgroup attachments, and ACKs it — or NACKs it with the error text when
part of it could not be applied (the valid rest is applied, as Envoy does for a partly invalid
update). Pods whose cgroup is missing are retried until it appears. SIGTERM/SIGINT detach
everything.

Restart after SIGKILL is make-before-break: the dead agent's pinned links keep redirecting; the new
agent moves its pin directory aside (`<pins>-stale`), loads and attaches its own programs, and
detaches the stale ones once its first policy from the control plane is applied (or after
`stale_grace` seconds without one). While both are attached the older programs run first and do
the rewrite; the newer ones see the proxy address and leave it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from cilia.api import redirect_v1 as api
from cilia.bpf import sys as bsys
from cilia.bpf.errors import BpfError
from cilia.bpf.policy import Endpoint, RedirectPlan, build_plan, make_resolver

log = logging.getLogger("cilia.agent")

DEFAULT_PROXY_ADDRESS = "127.0.0.1:15001"
AGENT_ROLE = "agent"
RUN_DIR = "/run/cilia"


@dataclass(frozen=True)
class AgentConfig:
    """The `cilia agent` flags (DESIGN §5) plus the test/knob extras."""

    xds: str
    node: str
    cgroup_root: str | None = None
    proxy_cgroup: str | None = None
    proxy_address: str = DEFAULT_PROXY_ADDRESS
    sockmap: bool = False
    bpffs: str | None = None
    tls_dir: str | None = None  # mTLS to the control plane with this `cilia cert --proxy agent~NODE` directory
    retry_interval: float = 2.0
    reconnect_max: float = 5.0
    stale_grace: float = 30.0


@dataclass
class AgentState:
    """Live agent state for `cilia status` (also sent as node.metadata `cilia_agent` on every ACK)."""

    node: str
    phase: str = "starting"  # starting | running | stopping | stopped | failed
    connected: bool = False
    sockmap: bool = False
    cgroup_root: str = ""
    pin_dir: str = ""
    programs_attached: int = 0
    cgroups: dict[str, str] = field(default_factory=dict)
    map_entries: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    policy_version: str = ""
    acked_version: str = ""
    acks: int = 0
    nacks: int = 0
    last_error: str = ""
    reclaimed_links: int = 0
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "phase": self.phase,
            "connected": self.connected,
            "sockmap": self.sockmap,
            "cgroup_root": self.cgroup_root,
            "pin_dir": self.pin_dir,
            "programs_attached": self.programs_attached,
            "cgroups": dict(self.cgroups),
            "map_entries": dict(self.map_entries),
            "counters": dict(self.counters),
            "policy_version": self.policy_version,
            "acked_version": self.acked_version,
            "acks": self.acks,
            "nacks": self.nacks,
            "last_error": self.last_error,
            "reclaimed_links": self.reclaimed_links,
            "updated_at": self.updated_at,
        }


def parse_endpoint(value: str, what: str) -> Endpoint:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{what}: {value!r} is not HOST:PORT")
    return Endpoint(host, int(port))


def find_or_mount(fstype: str, default_target: str) -> tuple[str, bool]:
    """(mount point, mounted by us): the first mount of `fstype`, else a new one at default_target."""
    found = bsys.mounts(fstype)
    if found:
        return found[0], False
    bsys.mount(fstype, default_target)
    return default_target, True


def pin_name(node: str) -> str:
    """A bpffs-safe name (bpffs rejects dots in names)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", node) or "node"


class Agent:
    """One agent instance: datapath + Delta ADS client. Use `run()`."""

    def __init__(self, config: AgentConfig, state: AgentState | None = None) -> None:
        self.config = config
        self.state = state or AgentState(node=config.node)
        self.default_proxy = parse_endpoint(config.proxy_address, "--proxy-address")
        self._dp: Any = None
        self._mounted: list[str] = []
        self._policy: Any = None
        self._plan = RedirectPlan()
        self._plan_errors: tuple[str, ...] = ()
        self._versions: dict[str, str] = {}
        self._cgroup_root = ""
        self._proxy_cgroup: str | None = None
        self._stale_dir: str | None = None

    # ---- setup / teardown -------------------------------------------------------------------

    def setup(self) -> None:
        """Mount what is missing, reclaim stale pins, load programs, attach the proxy cgroup."""
        from cilia.bpf.datapath import Datapath  # bcc lives behind this import

        cfg = self.config
        if cfg.cgroup_root:
            root = cfg.cgroup_root
        else:
            root, mounted = find_or_mount("cgroup2", os.path.join(RUN_DIR, "cgroup2"))
            if mounted:
                self._mounted.append(root)
        if cfg.bpffs:
            bpffs = cfg.bpffs
        else:
            bpffs, mounted = find_or_mount("bpf", "/sys/fs/bpf")
            if mounted:
                self._mounted.append(bpffs)
        self._cgroup_root = os.path.realpath(root)
        if cfg.proxy_cgroup:
            rel = cfg.proxy_cgroup
            path = rel if os.path.isabs(rel) and os.path.exists(rel) else os.path.join(root, rel.lstrip("/"))
            if not os.path.isfile(os.path.join(path, "cgroup.procs")):
                raise BpfError(f"--proxy-cgroup {rel}: no such cgroup under {root}")
            self._proxy_cgroup = os.path.realpath(path)
        pin_dir = os.path.join(bpffs, "cilia", pin_name(cfg.node))
        stale = pin_dir + "-stale"
        if os.path.exists(pin_dir):
            if os.path.exists(stale):  # an even older leftover: no longer needed for continuity
                self._reclaim_dir(stale)
            os.rename(pin_dir, stale)
            self._stale_dir = stale
            log.info("found pins of an earlier agent; keeping them until the first policy is applied")
        elif os.path.exists(stale):
            self._stale_dir = stale
        self.state.cgroup_root = self._cgroup_root
        self.state.pin_dir = pin_dir
        self._dp = Datapath(pin_dir, sockmap=cfg.sockmap)
        self.state.sockmap = cfg.sockmap
        self._apply_policy(api.NodeRedirectPolicy(node_name=cfg.node))

    def _reclaim_dir(self, path: str) -> None:
        from cilia.bpf.datapath import reclaim

        result = reclaim(path)
        self.state.reclaimed_links += result.links
        log.info("reclaimed %d stale pins (%d links) in %s", result.pins, result.links, path)

    def reclaim_stale(self) -> None:
        """Detach what an earlier (killed) agent left attached, now that ours is in place."""
        if self._stale_dir is not None:
            stale, self._stale_dir = self._stale_dir, None
            self._reclaim_dir(stale)

    def teardown(self) -> None:
        self.reclaim_stale()
        if self._dp is not None:
            self._dp.close()
            self._dp = None
        for target in reversed(self._mounted):
            with contextlib.suppress(BpfError):
                bsys.umount(target)
        self._mounted.clear()
        self.state.programs_attached = 0
        self.state.cgroups = {}

    # ---- policy -----------------------------------------------------------------------------

    def _apply_policy(self, policy: Any) -> tuple[str, ...]:
        """Plan and apply; returns the errors (empty = fully applied)."""
        proxy_id = bsys.cgroup_id(self._proxy_cgroup) if self._proxy_cgroup else 0
        result = build_plan(
            policy,
            make_resolver(self._cgroup_root),
            self.default_proxy,
            proxy_cgroup=self._proxy_cgroup,
            proxy_cgroup_id=proxy_id,
        )
        plan = result.plan
        if self._proxy_cgroup is None:
            # Without --proxy-cgroup the proxy's accepted sockets can be anywhere: answer
            # SO_ORIGINAL_DST node-wide (only recorded, i.e. redirected, connections get an answer).
            plan = replace(plan, observers=(self._cgroup_root,))
        errors = list(result.errors)
        if plan != self._plan or errors:
            errors += self._dp.apply(plan)
            self._plan = plan
        self._policy = policy
        self._plan_errors = tuple(errors)
        self.refresh_state()
        return self._plan_errors

    def retry_pending(self) -> None:
        """Re-plan the last policy when it had errors (e.g. a pod cgroup not created yet)."""
        if self._policy is None or not self._plan_errors:
            return
        before = self._plan_errors
        errors = self._apply_policy(self._policy)
        if errors != before:
            log.info("re-applied policy: %s", "; ".join(errors) or "all objects applied")
        self.state.last_error = "; ".join(errors)

    def refresh_state(self) -> None:
        dp = self._dp
        if dp is None:
            return
        self.state.programs_attached = dp.programs_attached()
        self.state.cgroups = {
            os.path.relpath(cg, self._cgroup_root): role for cg, role in dp.attachments().items()
        }
        self.state.map_entries = dp.map_counts()
        self.state.counters = dp.stats()
        self.state.updated_at = time.time()

    def handle_response(self, resp: Any) -> Any:
        """Apply one DeltaDiscoveryResponse; returns the ACK or NACK request."""
        errors: list[str] = []
        if resp.type_url != api.TYPE_URL:
            errors.append(f"unexpected type {resp.type_url!r}; this agent subscribes to {api.TYPE_URL}")
        else:
            policy = None
            removed = self.config.node in resp.removed_resources
            for res in resp.resources:
                if res.name != self.config.node:
                    errors.append(f"resource {res.name!r}: not this node's policy ({self.config.node!r})")
                    continue
                msg = api.NodeRedirectPolicy()
                if res.resource.type_url != api.TYPE_URL or not res.resource.Unpack(msg):
                    errors.append(
                        f"resource {res.name!r}: payload is {res.resource.type_url!r}, not {api.TYPE_URL}"
                    )
                    continue
                if msg.node_name and msg.node_name != self.config.node:
                    errors.append(
                        f"resource {res.name!r}: node_name {msg.node_name!r} is not {self.config.node!r}"
                    )
                    continue
                policy = msg
                self._versions[res.name] = res.version
                self.state.policy_version = res.version
            if removed:
                self._versions.pop(self.config.node, None)
                self.state.policy_version = ""
                policy = api.NodeRedirectPolicy(node_name=self.config.node)
            if policy is not None:
                errors.extend(self._apply_policy(policy))
                self.reclaim_stale()
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=api.TYPE_URL, response_nonce=resp.nonce, node=self.node_proto()
        )
        if errors:
            text = "; ".join(errors)
            req.error_detail.CopyFrom(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=text))
            self.state.nacks += 1
            self.state.last_error = text
            log.warning("NACK %s: %s", self.state.policy_version or resp.nonce, text)
        else:
            self.state.acks += 1
            self.state.acked_version = self.state.policy_version
            self.state.last_error = ""
            log.info("ACK %s", self.state.policy_version or resp.nonce)
        self.refresh_state()
        req.node.CopyFrom(self.node_proto())
        return req

    def node_proto(self) -> Any:
        meta = struct_pb2.Struct()
        meta.update({"cilia_agent": _jsonable(self.state.as_dict())})
        return base_pb2.Node(
            id=f"{AGENT_ROLE}~{self.config.node}",
            cluster="cilia-agent",
            user_agent_name="cilia-agent",
            metadata=meta,
        )

    def subscribe_request(self) -> Any:
        return discovery_pb2.DeltaDiscoveryRequest(
            node=self.node_proto(),
            type_url=api.TYPE_URL,
            resource_names_subscribe=[self.config.node],
            initial_resource_versions=dict(self._versions),
        )

    # ---- xDS --------------------------------------------------------------------------------

    async def _session(self, channel: grpc.aio.Channel) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        outbox: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield await outbox.get()

        outbox.put_nowait(self.subscribe_request())
        call = stub.DeltaAggregatedResources(requests())
        try:
            async for resp in call:
                self.state.connected = True
                outbox.put_nowait(self.handle_response(resp))
        finally:
            self.state.connected = False
            call.cancel()

    def _channel(self) -> grpc.aio.Channel:
        """A channel per connection attempt, so a renewed certificate in --tls-dir is used on reconnect."""
        if self.config.tls_dir is None:
            return grpc.aio.insecure_channel(self.config.xds)
        from cilia.security.ca import read_tls_dir

        cert, key, bundle = read_tls_dir(self.config.tls_dir)
        return grpc.aio.secure_channel(self.config.xds, grpc.ssl_channel_credentials(bundle, key, cert))

    async def _xds_loop(self) -> None:
        backoff = 0.1
        while True:
            started = time.monotonic()
            try:
                async with self._channel() as channel:
                    await self._session(channel)
                log.warning("xDS stream to %s ended; reconnecting", self.config.xds)
            except grpc.aio.AioRpcError as exc:
                log.warning("xDS stream to %s: %s %s", self.config.xds, exc.code(), exc.details())
            except Exception as exc:  # unreadable credentials: say so and keep trying
                log.error("xDS connection to %s: %s", self.config.xds, exc)
            if time.monotonic() - started > 5:
                backoff = 0.1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max)

    async def _stale_timer(self) -> None:
        await asyncio.sleep(self.config.stale_grace)
        if self._stale_dir is not None:
            log.warning(
                "no policy within %.0f s; detaching the earlier agent's programs", self.config.stale_grace
            )
            self.reclaim_stale()
            self.refresh_state()

    async def _retry_loop(self) -> None:
        # Map counts walk the maps; refresh them for status every few rounds, not every one.
        rounds = 0
        while True:
            await asyncio.sleep(self.config.retry_interval)
            self.retry_pending()
            rounds += 1
            if rounds % 5 == 0:
                self.refresh_state()

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Set up, serve until `stop` is set (or the task is cancelled), then detach everything."""
        stop = stop or asyncio.Event()
        try:
            await asyncio.to_thread(self.setup)
        except Exception as exc:
            self._stale_dir = None  # leave an earlier agent's programs working for the next start
            self.state.phase = "failed"
            self.state.last_error = str(exc)
            log.error("agent setup failed: %s", exc)
            self.teardown()
            return 1
        self.state.phase = "running"
        log.info(
            "agent %s running: cgroup root %s, pins %s, sockmap %s",
            self.config.node,
            self._cgroup_root,
            self.state.pin_dir,
            "on" if self.config.sockmap else "off",
        )
        tasks = [
            asyncio.create_task(self._xds_loop()),
            asyncio.create_task(self._retry_loop()),
            asyncio.create_task(self._stale_timer()),
        ]
        try:
            await stop.wait()
        finally:
            self.state.phase = "stopping"
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self.teardown()
            self.state.phase = "stopped"
            log.info("agent %s stopped; all programs detached", self.config.node)
        return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


async def run_agent(
    xds: str,
    node: str,
    cgroup_root: str | None = None,
    proxy_cgroup: str | None = None,
    proxy_address: str = DEFAULT_PROXY_ADDRESS,
    sockmap: bool = False,
    *,
    bpffs: str | None = None,
    state: AgentState | None = None,
    stop: asyncio.Event | None = None,
    tls_dir: str | None = None,
) -> int:
    """Run the agent until `stop` is set; returns the exit code (0 clean, 1 setup failed)."""
    config = AgentConfig(
        xds=xds,
        node=node,
        cgroup_root=cgroup_root,
        proxy_cgroup=proxy_cgroup,
        proxy_address=proxy_address,
        sockmap=sockmap,
        bpffs=bpffs,
        tls_dir=tls_dir,
    )
    return await Agent(config, state).run(stop)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `cilia agent` flags (DESIGN §5), for the CLI's subparser."""
    parser.add_argument("--xds", required=True, metavar="HOST:PORT", help="control plane xDS address")
    parser.add_argument("--node", required=True, metavar="NAME", help="this node's name")
    parser.add_argument("--cgroup-root", metavar="DIR", help="cgroup2 mount (default: found or mounted)")
    parser.add_argument(
        "--proxy-cgroup", metavar="PATH", help="cgroup of the node proxy (relative to the root)"
    )
    parser.add_argument("--proxy-address", default=DEFAULT_PROXY_ADDRESS, metavar="HOST:PORT")
    parser.add_argument("--sockmap", choices=("on", "off"), default="off", help="sockhash splicing")
    parser.add_argument("--bpffs", metavar="DIR", help="bpffs mount for pins (default: found or mounted)")
    parser.add_argument("--tls-dir", metavar="DIR",
                        help="mTLS to the control plane's --xds-tls port with DIR's cert.pem/key.pem/ca.pem "
                             "(`cilia cert --proxy agent~NODE`); re-read on every reconnect")
    parser.add_argument("--log-level", default="INFO")


async def run_from_args(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Run with SIGTERM/SIGINT setting `stop`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        parse_endpoint(args.proxy_address, "--proxy-address")
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return await run_agent(
        args.xds,
        args.node,
        cgroup_root=args.cgroup_root,
        proxy_cgroup=args.proxy_cgroup,
        proxy_address=args.proxy_address,
        sockmap=args.sockmap == "on",
        bpffs=args.bpffs,
        stop=stop,
        tls_dir=args.tls_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`cilia agent ...` entry: parse flags, run until SIGTERM/SIGINT, return the exit code."""
    parser = argparse.ArgumentParser(prog="cilia agent", description="eBPF redirect node agent")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(run_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
