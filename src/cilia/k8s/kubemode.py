"""The Kubernetes pieces of one control plane: source, status writer and leader elector, built together.

This only builds and connects them; ``cilia.app.ControlPlane`` starts their coroutines in its TaskGroup.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cilia import __version__
from cilia.diagnostics import Issue
from cilia.errors import SourceError
from cilia.k8s.events import EventLimits, EventRecorder, problems_from
from cilia.k8s.kubeapi import KubeApi
from cilia.k8s.kubesource import KubernetesSource, RestartHook, WatchOptions
from cilia.k8s.leader import LeaderElector, LeaseConfig, default_identity
from cilia.k8s.statuswriter import StatusWriter, WriteLimits
from cilia.k8s.store import Store
from cilia.translate.context import ObjectStatus


@dataclass(frozen=True, slots=True)
class KubeOptions:
    kubeconfig: str | None = None  # None: in-cluster service account, then ~/.kube/config
    watch: WatchOptions = field(default_factory=WatchOptions)
    status: WriteLimits = field(default_factory=WriteLimits)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    leader_election: bool = True  # False: this replica always writes status (run only one then)
    write_status: bool = True  # status and Events
    events: EventLimits = field(default_factory=EventLimits)


def user_agent(identity: str) -> str:
    """`cilia/VERSION (IDENTITY)`: the API server's audit log tells replicas apart by it."""
    return f"cilia/{__version__} ({identity})"


class KubeMode:
    def __init__(self, store: Store, api: KubeApi, opts: KubeOptions, *,
                 on_watch_restart: RestartHook | None = None) -> None:
        if not opts.lease.identity:  # one identity for the Lease, the Events and the user agent
            opts = dataclasses.replace(opts, lease=dataclasses.replace(opts.lease, identity=default_identity()))
        self.opts = opts
        self.identity = opts.lease.identity
        self.api = api
        self.source = KubernetesSource(store, api, options=opts.watch, on_watch_restart=on_watch_restart)
        self.elector = LeaderElector(api, opts.lease, on_change=self._leadership) if opts.leader_election else None
        self.leading = asyncio.Event()  # set while this replica leads (always, without leader election)
        if self.elector is None:
            self.leading.set()
        self.events = EventRecorder(api, self.source, instance=self.identity, limits=opts.events,
                                    is_leader=self.is_leader) if opts.write_status else None
        self.writer = StatusWriter(api, self.source, limits=opts.status, is_leader=self.is_leader,
                                   on_recompute=self._problems) if opts.write_status else None

    @classmethod
    async def connect(cls, store: Store, opts: KubeOptions, *,
                      on_watch_restart: RestartHook | None = None) -> KubeMode:
        if opts.leader_election:
            opts.lease.check()
        if not opts.lease.identity:
            opts = dataclasses.replace(opts, lease=dataclasses.replace(opts.lease, identity=default_identity()))
        try:
            api = await KubeApi.connect(opts.kubeconfig, user_agent=user_agent(opts.lease.identity))
        except Exception as exc:  # kubernetes-asyncio raises ConfigException, OSError, yaml errors ...
            where = opts.kubeconfig or "in-cluster config or ~/.kube/config"
            raise SourceError(f"cannot configure the Kubernetes client from {where}: {exc}") from exc
        return cls(store, api, opts, on_watch_restart=on_watch_restart)

    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector is not None else True

    def leader_metric(self) -> tuple[str, bool, Mapping[str, int]]:
        """(lease, leading, errors by reason) for the cilia_leader* metrics."""
        assert self.elector is not None
        return self.opts.lease.ref, self.elector.is_leader, self.elector.errors

    def leader_status(self) -> dict[str, Any]:
        """`/debug/leader`."""
        if self.elector is not None:
            return self.elector.status()
        return {"enabled": False, "leading": True, "ready": True,
                "message": "leader election is off (--no-leader-election): this replica writes status"}

    def _leadership(self, leading: bool) -> None:
        if leading:
            self.leading.set()
        else:
            self.leading.clear()
        if self.writer is not None:
            self.writer.wake()
        if self.events is not None:
            self.events.wake()

    def _problems(self, issues: Sequence[Issue], statuses: Sequence[ObjectStatus]) -> None:
        if self.events is not None:
            self.events.set_problems(problems_from(issues, statuses))

    async def initial_sync(self) -> None:
        await self.source.initial_sync()

    def coroutines(self, proxy_status: Any = None) -> list[Coroutine[Any, Any, None]]:
        """What to run for the life of the control plane (`proxy_status`: StatusRegistry, for NACKs)."""
        coros: list[Coroutine[Any, Any, None]] = [self.source.run()]
        if self.elector is not None:
            coros.append(self.elector.run())
        if self.writer is not None:
            coros.append(self.writer.run(proxy_status))
        if self.events is not None:
            coros.append(self.events.run())
        return coros

    def after_rebuild(self, statuses: Iterable[ObjectStatus], issues: Iterable[Issue]) -> None:
        if self.writer is not None:
            self.writer.set_inputs(statuses, issues)

    async def close(self) -> None:
        await self.api.close()
