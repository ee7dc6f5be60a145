"""The flow routes of the campaigns API (added to ``create_app`` through ``extra_handlers``).

- ``POST /v1/flows`` (a definition; its ``id`` names the flow; stored as version 1, disabled),
  ``GET /v1/flows``, ``GET /v1/flows/{id}?version=``;
- ``POST /v1/flows/{id}/versions`` (a new version: new runs start on it, running ones keep theirs);
- ``POST /v1/flows/{id}/enable`` (checked against the shop's templates first), ``/disable``;
- ``POST /v1/flows/install`` (a ready-made flow from the library, with its starter templates);
- ``PUT /v1/flow-templates/{template_id}``, ``GET /v1/flow-templates``: the texts sends name;
- ``POST /v1/flows/{id}/simulate`` (over the shop's past events, or generated ones);
- ``GET /v1/flows/{id}/runs``, ``GET /v1/subscribers/{id}/runs``, ``GET /v1/flows/{id}/nodes``
  (per version and node: waiting, completed, exited; messages pending, sent, failed, skipped),
  ``GET /v1/flows/{id}/messages``.

Another shop's flow ids answer 404, exactly like ids that do not exist."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
import msgspec
from litestar import get, post, put
from litestar.params import JSONBody, PathParameter, QueryParameter

from campaigns.core import flow_library, flow_sim, templates
from campaigns.core import flows as F
from campaigns.errors import InvalidInput, NotFound, no_nul
from campaigns.service.app import Tenant
from campaigns.store.base import Store
from campaigns.store.flow_rows import FlowHead, FlowMessage, FlowRunRow, NodeCount

T = TypeVar("T")
FlowId = Annotated[str, PathParameter(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
TemplateId = Annotated[str, PathParameter(pattern=r"^[A-Za-z0-9_\-.]{1,200}$")]
SubId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
After = Annotated[int, QueryParameter(ge=0, le=2**63 - 1)]


class FlowIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    definition: dict[str, Any]  # the flow JSON (docs/CAMPAIGNS-FLOWS.md); its ``version`` is set by the store

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class FlowOut(msgspec.Struct, frozen=True, kw_only=True):
    flow: FlowHead
    version: int
    definition: Any


class FlowPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[FlowHead]


class InstallIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    flow: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # a library id: abandoned_cart, welcome ...
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$")] | None = None  # install under another id
    overrides: dict[str, Any] = {}  # top-level keys replacing the library's (nodes, exits, name ...)

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class TemplateIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1600)]

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class TemplatesOut(msgspec.Struct, frozen=True, kw_only=True):
    items: dict[str, str]


class SimulateIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    source: Literal["history", "generated"] = "generated"
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None  # default: the latest
    since: float | None = None  # history: from (default: 30 days before now)
    until: float | None = None  # history: to (default: now); generated: the horizon end
    subscribers: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000  # generated traffic
    seed: int = 1
    exit_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    click_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    days: Annotated[float, msgspec.Meta(gt=0, le=366)] = 30.0  # generated: how long to run


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[FlowRunRow]
    next: int | None = None


class NodesOut(msgspec.Struct, frozen=True, kw_only=True):
    flow: str
    items: list[NodeCount]


class MessagesOut(msgspec.Struct, frozen=True, kw_only=True):
    items: list[FlowMessage]


class FlowService:
    """Flow definitions, templates, simulation and reports for the API (and the CLI)."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store, self.clock = store, clock

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kw))

    async def head(self, tenant: str, flow_id: str) -> FlowHead:
        head = await self._run(self.store.flow_head, tenant, flow_id)
        if head is None:
            raise NotFound(f"no flow {flow_id!r}", code="flow_not_found")
        return head

    async def get(self, tenant: str, flow_id: str, version: int | None = None) -> FlowOut:
        head = await self.head(tenant, flow_id)
        v = head.latest if version is None else version
        definition = await self._run(self.store.flow_version, tenant, flow_id, v)
        if definition is None:
            raise NotFound(f"flow {flow_id!r} has no version {v}", code="flow_version_not_found", field="version")
        return FlowOut(flow=head, version=v, definition=definition)

    async def publish(self, tenant: str, definition: dict[str, Any], *, new: bool, flow_id: str | None = None) -> FlowOut:
        """Validate (templates are checked at enable time) and store as the next version; a new
        version of an enabled flow is checked against the shop's templates now."""
        if flow_id is not None:
            if definition.get("id", flow_id) != flow_id:
                raise InvalidInput("the definition's id is not the flow's", code="flow.id_mismatch", field="$.id")
            definition = {**definition, "id": flow_id}
        flow = F.parse_flow({**definition, "version": 1})
        if not new:
            head = await self.head(tenant, flow.id)
            if head.enabled:
                await self._check_templates(tenant, flow)
        body = F.dump_flow(flow)
        head = await self._run(self.store.put_flow_version, tenant, flow.id, flow.name, body, now=self.clock(), new=new)
        return await self.get(tenant, head.id, head.latest)

    async def _check_templates(self, tenant: str, flow: F.Flow) -> None:
        known = await self._run(self.store.flow_templates, tenant)
        F.parse_flow(F.dump_flow(flow), templates=known.keys())

    async def enable(self, tenant: str, flow_id: str, enabled: bool) -> FlowHead:
        if enabled:
            out = await self.get(tenant, flow_id)
            await self._check_templates(tenant, F.parse_flow(out.definition))
        return await self._run(self.store.set_flow_enabled, tenant, flow_id, enabled, now=self.clock())

    async def install(self, tenant: str, body: InstallIn) -> FlowOut:
        lib = flow_library.library()
        if body.flow not in lib:
            raise NotFound(f"no ready-made flow {body.flow!r} (one of {', '.join(sorted(lib))})",
                           code="library_flow_not_found", field="flow")  # fmt: skip
        definition = {**lib[body.flow], **body.overrides}
        if body.id is not None:
            definition["id"] = body.id
        flow = F.parse_flow({**definition, "version": 1})
        known = await self._run(self.store.flow_templates, tenant)
        now = self.clock()
        for node in flow.nodes.values():
            if isinstance(node, F.SendNode) and node.template not in known and node.template in flow_library.STARTER_TEXTS:
                await self._run(self.store.put_flow_template, tenant, node.template,
                                flow_library.STARTER_TEXTS[node.template], now=now)  # fmt: skip
        return await self.publish(tenant, definition, new=True)

    async def put_template(self, tenant: str, template_id: str, text: str) -> None:
        try:
            templates.compile_template(text)
        except templates.TemplateError as exc:
            raise InvalidInput(str(exc), code=exc.code, field="text") from exc
        await self._run(self.store.put_flow_template, tenant, template_id, text, now=self.clock())

    async def simulate(self, tenant: str, flow_id: str, body: SimulateIn) -> flow_sim.SimReport:
        flow = F.parse_flow((await self.get(tenant, flow_id, body.version)).definition)
        now = self.clock()
        if body.source == "generated":
            events = flow_sim.generate_events(flow, body.subscribers, seed=body.seed, start=now,
                                              exit_rate=body.exit_rate)  # fmt: skip
            return flow_sim.simulate(flow, {}, events, until=now + body.days * 86_400, click_rate=body.click_rate)
        since = body.since if body.since is not None else now - 30 * 86_400
        until = body.until if body.until is not None else now
        if until < since:
            raise InvalidInput("until is before since", code="invalid_field", field="until")
        history = await self._run(self.store.flow_history, tenant, since=since, until=until)
        events = [flow_sim.SimEvent(at=at, subscriber_id=sid, event=e) for at, sid, e in history]
        subs = await self._snapshots(tenant, {sid for _, sid, _ in history})
        return flow_sim.simulate(flow, subs, events, until=until, click_rate=body.click_rate)

    async def _snapshots(self, tenant: str, ids: set[int]) -> dict[int, F.FlowSubscriber]:
        rows = await self._run(self.store.subscribers_by_ids, tenant, sorted(ids))
        out = {}
        for s in rows:
            fields = msgspec.structs.asdict(s)
            fields.pop("tenant", None)
            out[s.id] = F.FlowSubscriber(id=s.id, time_zone=s.time_zone, fields=fields)
        return out


def flow_handlers(service: FlowService) -> list[Any]:
    @post("/v1/flows", status_code=201)
    async def create_flow(tenant: Tenant, data: JSONBody[FlowIn]) -> FlowOut:
        """Store a new flow (version 1, disabled); 422 ``flow.*`` with ``field`` the JSON path of a fault."""
        return await service.publish(tenant, data.definition, new=True)

    @get("/v1/flows")
    async def list_flows(tenant: Tenant) -> FlowPage:
        return FlowPage(items=await service._run(service.store.flow_heads, tenant))

    @get("/v1/flows/{flow_id:str}")
    async def get_flow(tenant: Tenant, flow_id: FlowId,
                       version: Annotated[int | None, QueryParameter(ge=1)] = None) -> FlowOut:  # fmt: skip
        return await service.get(tenant, flow_id, version)

    @post("/v1/flows/{flow_id:str}/versions", status_code=201)
    async def new_version(tenant: Tenant, flow_id: FlowId, data: JSONBody[FlowIn]) -> FlowOut:
        """Publish the next version: new runs start on it; running ones finish on theirs."""
        return await service.publish(tenant, data.definition, new=False, flow_id=flow_id)

    @post("/v1/flows/{flow_id:str}/enable", status_code=200)
    async def enable_flow(tenant: Tenant, flow_id: FlowId) -> FlowHead:
        """Switch on (every send's template must exist: 422 ``flow.unknown_template``)."""
        return await service.enable(tenant, flow_id, True)

    @post("/v1/flows/{flow_id:str}/disable", status_code=200)
    async def disable_flow(tenant: Tenant, flow_id: FlowId) -> FlowHead:
        """Switch off: no new runs; runs already started go on to their end."""
        return await service.enable(tenant, flow_id, False)

    @post("/v1/flows/install", status_code=201)
    async def install_flow(tenant: Tenant, data: JSONBody[InstallIn]) -> FlowOut:
        """Install a ready-made flow (and its starter templates the shop does not have yet)."""
        return await service.install(tenant, data)

    @put("/v1/flow-templates/{template_id:str}", status_code=200)
    async def put_template(tenant: Tenant, template_id: TemplateId, data: JSONBody[TemplateIn]) -> TemplatesOut:
        await service.put_template(tenant, template_id, data.text)
        return TemplatesOut(items={template_id: data.text})

    @get("/v1/flow-templates")
    async def list_templates(tenant: Tenant) -> TemplatesOut:
        return TemplatesOut(items=await service._run(service.store.flow_templates, tenant))

    @post("/v1/flows/{flow_id:str}/simulate", status_code=200)
    async def simulate_flow(tenant: Tenant, flow_id: FlowId, data: JSONBody[SimulateIn]) -> flow_sim.SimReport:
        """What the flow would do over the shop's past events or generated ones (virtual time)."""
        return await service.simulate(tenant, flow_id, data)

    @get("/v1/flows/{flow_id:str}/runs")
    async def flow_runs(tenant: Tenant, flow_id: FlowId, after: After = 0, limit: Limit = 100) -> RunPage:
        await service.head(tenant, flow_id)
        rows = await service._run(service.store.flow_run_rows, tenant, flow_id=flow_id, after=after, limit=limit)
        return RunPage(items=rows, next=rows[-1].id if len(rows) == limit else None)

    @get("/v1/subscribers/{subscriber_id:int}/runs")
    async def subscriber_runs(tenant: Tenant, subscriber_id: SubId, after: After = 0, limit: Limit = 100) -> RunPage:
        if await service._run(service.store.subscriber, tenant, subscriber_id) is None:
            raise NotFound(f"no subscriber {subscriber_id}", code="subscriber_not_found")
        rows = await service._run(service.store.flow_run_rows, tenant, subscriber_id=subscriber_id, after=after,
                                  limit=limit)  # fmt: skip
        return RunPage(items=rows, next=rows[-1].id if len(rows) == limit else None)

    @get("/v1/flows/{flow_id:str}/nodes")
    async def flow_nodes(tenant: Tenant, flow_id: FlowId) -> NodesOut:
        await service.head(tenant, flow_id)
        return NodesOut(flow=flow_id, items=await service._run(service.store.flow_node_counts, tenant, flow_id))

    @get("/v1/flows/{flow_id:str}/messages")
    async def flow_messages(tenant: Tenant, flow_id: FlowId, limit: Limit = 100) -> MessagesOut:
        """The flow's sends (source ``flow_id`` and ``step``: what attribution and reports by step read)."""
        await service.head(tenant, flow_id)
        return MessagesOut(items=await service._run(service.store.flow_messages, tenant, flow_id=flow_id, limit=limit))

    return [create_flow, list_flows, get_flow, new_version, enable_flow, disable_flow, install_flow, put_template,
            list_templates, simulate_flow, flow_runs, subscriber_runs, flow_nodes, flow_messages]  # fmt: skip


__all__ = ["FlowIn", "FlowOut", "FlowService", "InstallIn", "SimulateIn", "flow_handlers"]
