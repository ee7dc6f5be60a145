"""The campaign routes of the campaigns API (added to ``create_app`` through ``extra_handlers``):

- ``POST /v1/campaigns`` (name + definition, validated), ``GET /v1/campaigns/{id}``;
- ``POST /v1/campaigns/{id}/launch`` (safe to repeat: a relaunch resumes, never sends twice),
  ``/pause``, ``/resume``, ``/cancel`` (reach every gateway job of the campaign);
- ``GET /v1/campaigns/{id}/report?by=variant,hour`` (JSON for charts), ``/clicks``, ``/recipients``;
- ``GET /v1/reports?by=campaign,step&since=`` (every campaign and flow step of the shop);
- ``POST /v1/campaigns/{id}/winner`` (A/B decision; the held rest is sent the winner);
- ``GET|HEAD /l/{code}``: the short-link redirect (302 with UTM parameters; 404 unknown);
- ``POST /v1/gateway/{shop}/events``: the gateway's signed message-state webhooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, head, post
from litestar.exceptions import NotAuthorizedException
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, PathParameter, QueryParameter

from campaigns.core import attribution
from campaigns.errors import InvalidInput
from campaigns.service.app import Tenant
from campaigns.service.launch import LaunchOut, Launcher, PreviewOut
from campaigns.service.signature import HEADER, verify
from campaigns.service.tracking import StateBatch, Tracker, WinnerOut
from campaigns.store.campaign_rows import CampaignRow, ClickCounts, RecipientRow

Id = Annotated[int, PathParameter(ge=1, le=2**62)]
_states = msgspec.json.Decoder(StateBatch)
_NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer"}


class CampaignIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    definition: dict[str, Any]

    def __post_init__(self) -> None:
        if '\x00' in self.name:  # the definition's own text is checked by CampaignSpec
            raise ValueError('NUL character (U+0000) in field `name`')


class SendTimesOut(msgspec.Struct, frozen=True, kw_only=True):
    clock: str
    hours: list[int]  # 24 counts, hour 0 first


class StatesOut(msgspec.Struct, frozen=True, kw_only=True):
    moved: int


class RecipientPage(msgspec.Struct, frozen=True, kw_only=True):
    """A campaign's frozen recipients by subscriber id: each one's variant, final text (with their own
    short links and discount code), batch (-1: held for the A/B winner, text still empty) and state."""

    items: list[RecipientRow]
    next: int | None = None


def campaign_handlers(launcher: Launcher, tracker: Tracker, secrets: Mapping[str, str] | None = None,
                      inbox: Any = None) -> list[Any]:  # fmt: skip
    """``inbox`` (``campaigns.service.inbox.Inbox``): the state webhook's events of single messages
    (people's answers) go to it too."""
    secrets = dict(secrets or {})

    @post("/v1/campaigns", status_code=201)
    async def create_campaign(tenant: Tenant, data: JSONBody[CampaignIn]) -> CampaignRow:
        return await launcher.create(tenant, data.name, data.definition)

    @get("/v1/campaigns/{campaign_id:int}")
    async def get_campaign(tenant: Tenant, campaign_id: Id) -> CampaignRow:
        return await launcher.campaign(tenant, campaign_id)

    @post("/v1/campaigns/{campaign_id:int}/launch", status_code=202)
    async def launch_campaign(tenant: Tenant, campaign_id: Id) -> LaunchOut:
        return await launcher.launch(tenant, campaign_id)

    def control(action: Literal["pause", "resume", "cancel"]) -> Any:
        @post(f"/v1/campaigns/{{campaign_id:int}}/{action}", status_code=200, name=f"campaign_{action}",
              operation_id=f"campaign_{action}")  # fmt: skip
        async def handler(tenant: Tenant, campaign_id: Id) -> CampaignRow:
            return await launcher.control(tenant, campaign_id, action)

        return handler

    @get("/v1/campaigns/{campaign_id:int}/preview")
    async def campaign_preview(tenant: Tenant, campaign_id: Id, subscriber: FromQuery[int]) -> list[PreviewOut]:
        """Each variant's text for one subscriber, measured by the gateway (``POST /v1/preview``)."""
        return await launcher.preview(tenant, campaign_id, subscriber)

    @post("/v1/campaigns/{campaign_id:int}/winner", status_code=200)
    async def campaign_winner(tenant: Tenant, campaign_id: Id) -> WinnerOut:
        return await tracker.send_winner(tenant, campaign_id)

    def dimensions(by: str) -> list[str]:
        dims = [d.strip() for d in by.split(",") if d.strip()]
        if not dims or len(dims) > 4:
            raise InvalidInput("by: one to four of campaign, variant, step, hour", code="unknown_dimension", field="by")
        return dims

    @get("/v1/campaigns/{campaign_id:int}/report")
    async def campaign_report(tenant: Tenant, campaign_id: Id, by: FromQuery[str] = "campaign",
                              zone: FromQuery[str | None] = None) -> attribution.Report:  # fmt: skip
        return await tracker.report(tenant, campaign_id, dimensions(by), zone)

    @get("/v1/reports")
    async def tenant_report(tenant: Tenant, by: FromQuery[str] = "campaign,step", zone: FromQuery[str | None] = None,
                            since: Annotated[float, Parameter(ge=0, le=1e11)] = 0.0) -> attribution.Report:  # fmt: skip
        """Every campaign and flow step of the shop (orders and opt-outs at or after ``since``)."""
        return await tracker.report(tenant, None, dimensions(by), zone, since=since)

    @get("/v1/campaigns/{campaign_id:int}/send-times")
    async def campaign_send_times(tenant: Tenant, campaign_id: Id, clock: FromQuery[str] = "tenant") -> SendTimesOut:
        """The planned sends by hour of day (0-23), on the shop's clock or each recipient's."""
        return SendTimesOut(clock=clock, hours=await tracker.send_times(tenant, campaign_id, clock))

    @get("/v1/campaigns/{campaign_id:int}/recipients")
    async def campaign_recipients(tenant: Tenant, campaign_id: Id,
                                  after: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
                                  limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100) -> RecipientPage:  # fmt: skip
        """Who the campaign went (or goes) to, with what text and in which state; cursor = subscriber id."""
        await launcher.campaign(tenant, campaign_id)
        rows = await launcher._run(launcher.store.campaign_recipients, tenant, campaign_id, after=after, limit=limit)
        return RecipientPage(items=rows, next=rows[-1].subscriber_id if len(rows) == limit else None)

    @get("/v1/campaigns/{campaign_id:int}/clicks")
    async def campaign_clicks(tenant: Tenant, campaign_id: Id) -> ClickCounts:
        await launcher.campaign(tenant, campaign_id)
        await tracker.flush()
        return await launcher._run(launcher.store.click_counts, tenant, campaign_id)

    async def _hit(code: str, request: Request, method: Literal["GET", "HEAD"]) -> Response[Any]:
        hit = await tracker.redirect(code, method=method, user_agent=request.headers.get("user-agent"))
        if hit is None:
            return Response({"error": "no such link", "code": "link_not_found"}, status_code=404, headers=_NO_STORE)
        return Response(None, status_code=302, headers={**_NO_STORE, "location": hit.location})

    # Short links are https://{short_domain}/{code}: the domain points here, so the code is served at
    # the root as well as under /l/ (static routes such as /healthz win over the root pattern).
    @get(["/l/{code:str}", "/{code:str}"], include_in_schema=False, status_code=302)
    async def short_link(code: FromPath[str], request: Request) -> Response[Any]:
        return await _hit(code, request, "GET")

    @head(["/l/{code:str}", "/{code:str}"], include_in_schema=False, status_code=302)
    async def short_link_head(code: FromPath[str], request: Request) -> Response[None]:
        resp = await _hit(code, request, "HEAD")
        return Response(None, status_code=resp.status_code, headers=dict(resp.headers))

    @post("/v1/gateway/{shop:str}/events", status_code=200, include_in_schema=False)
    async def gateway_events(shop: FromPath[str], request: Request) -> StatesOut:
        """The gateway's message-state webhook (a job's ``callback_url``), signed with the shop's secret."""
        body = await request.body()
        secret = secrets.get(shop)
        if secret is None or not verify(secret, request.headers.get(HEADER, ""), body, launcher.clock()):
            raise NotAuthorizedException("bad or missing Sluice-Signature")
        try:
            batch = _states.decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"not a state batch: {exc}", code="invalid_json") from None
        moved = await tracker.states(shop, batch)
        if inbox is not None:
            moved += await inbox.states(shop, batch.events)
        return StatesOut(moved=moved)

    return [create_campaign, get_campaign, launch_campaign, control("pause"), control("resume"),
            control("cancel"), campaign_winner, campaign_preview, campaign_report, tenant_report, campaign_send_times,
            campaign_recipients, campaign_clicks, short_link, short_link_head, gateway_events]  # fmt: skip


_REDIRECT_HEADERS = [(b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"), (b"content-length", b"0")]


def redirect_front(app: Any, tracker: Tracker) -> Any:
    """The ASGI app with short-link hits answered in front of it: ``GET|HEAD /{code}`` and
    ``/l/{code}`` go straight to ``Tracker.redirect`` and a bare 302, without the framework's routing,
    signature parsing and response machinery (most of a redirect's cost; docs/BENCHMARKS.md). Anything
    else, an unknown code (the 404 body) and any error fall through to ``app``, whose routes answer
    exactly as before (the same handlers serve the same paths)."""

    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            code = path[3:] if path.startswith("/l/") else path[1:]
            if 5 <= len(code) <= 16 and code.isascii() and code.isalnum():
                ua = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"user-agent"), None)
                try:
                    hit = await tracker.redirect(code, method=scope["method"], user_agent=ua)
                except Exception:  # noqa: BLE001 - the framework's path maps it (503 for storage)
                    hit = None
                    tracker.log_front_error(code)
                else:
                    if hit is not None:
                        await send({"type": "http.response.start", "status": 302,
                                    "headers": [(b"location", hit.location.encode()), *_REDIRECT_HEADERS]})  # fmt: skip
                        await send({"type": "http.response.body", "body": b""})
                        return
        await app(scope, receive, send)

    return front
