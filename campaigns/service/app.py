"""The campaigns HTTP API (Litestar: msgspec-native, OpenAPI at ``/schema/openapi.json``).

Conventions follow the gateway's API: JSON, ``Authorization: Bearer <key>`` naming the tenant (a shop),
201 with the resource it created, 202 for events, cursor pagination (``?after=<cursor>&limit=``, the
answer's ``next`` is the next ``after``), and every error as ``{"code", "message", "field"}`` with a
stable ``code``. Another shop's ids answer 404, exactly like ids that do not exist."""

from __future__ import annotations

import hashlib
import hmac
import html
import io
import logging
import os
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import anyio
import msgspec
import segno
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter

from campaigns.config import CampaignSettings
from campaigns.core import proof as proofs
from campaigns.core.consent import ConsentEntry, Evidence, State
from campaigns.core.forms import form_page, popup_script, sms_link
from campaigns.core.limits import WindowLimit
from campaigns.core.events import ShopEvent, decode_event
from campaigns.core.imports import decode_csv
from campaigns.core.model import Subscriber
from campaigns.errors import CallerError, CampaignError, InvalidInput, NotFound, StorageError, no_nul, schema_field
from campaigns.service.audience import Audience, ConsentIn, FormIn, SubscriberIn, SubscriberOut
from campaigns.service.gateway_client import Inbound
from campaigns.service.link import GatewayLink
from campaigns.service.signature import HEADER, verify
from campaigns.store.base import Applied, ImportResult, SegmentRow

log = logging.getLogger(__name__)

Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
MAX_ID = 2**63 - 1  # ids are 64-bit in both engines: larger ones cannot exist (404 by validation: 422)
After = Annotated[int, QueryParameter(ge=0, le=MAX_ID)]
Id = Annotated[int, PathParameter(ge=1, le=MAX_ID)]
Tenant = NamedDependency[str]  # the shop the API key names (``create_app.tenant``)


class ErrorOut(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    field: str | None = None


class SubscriberPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Subscriber]
    next: int | None = None


class Membership(msgspec.Struct, frozen=True, kw_only=True):
    segment_id: int
    since: float


class MembershipOut(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Membership]


class TagsIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    add: list[Annotated[str, msgspec.Meta(min_length=1, max_length=100)]] = []
    remove: list[Annotated[str, msgspec.Meta(min_length=1, max_length=100)]] = []

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class TagsOut(msgspec.Struct, frozen=True, kw_only=True):
    tags: list[str]


class ConsentOut(msgspec.Struct, frozen=True, kw_only=True):
    entry: ConsentEntry
    state: State
    marketable: bool


class LedgerOut(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[ConsentEntry]


class EventOut(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str
    subscriber_id: int | None = None


class BulkOut(msgspec.Struct, frozen=True, kw_only=True):
    applied: int
    duplicate: int
    stale: int


class SignupToolsOut(msgspec.Struct, frozen=True, kw_only=True):
    form_url: str
    popup_script: str  # paste into the shop's pages
    sms_link: str | None  # prefilled sms: link (social opt-in); None without signup.sender
    qr_svg_url: str | None
    keyword: str


_form_decoder = msgspec.json.Decoder(FormIn)


def _invalid(exc: msgspec.ValidationError) -> InvalidInput:
    return InvalidInput(str(exc), code="invalid_field", field=schema_field(str(exc))[1])


class SegmentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    definition: Any

    def __post_init__(self) -> None:  # the definition's text is the segment validator's (segment.bad_value, $.value)
        if "\x00" in self.name:  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field
            raise ValueError("NUL character (U+0000) in field `name`")


class SegmentCheckIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    definition: Any


class SegmentCheckOut(msgspec.Struct, frozen=True, kw_only=True):
    valid: bool
    definition: Any  # canonical form
    count: int


class SegmentPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[SegmentRow]
    next: int | None = None


class CountOut(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    at: float


class MembersOut(msgspec.Struct, frozen=True, kw_only=True):
    items: list[int]
    next: int | None = None


class SampleOut(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Subscriber]


def tenant_keys(settings: CampaignSettings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """hex SHA-256 of each tenant's campaigns API key -> tenant name (keys themselves are not kept)."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for t in settings.tenants:
        if t.key_sha256 is not None:
            out[t.key_sha256] = t.name
        elif t.key_env is not None and env.get(t.key_env):
            out[hashlib.sha256(env[t.key_env].encode()).hexdigest()] = t.name
        else:
            log.warning("campaigns.tenant.no_key tenant=%s env=%s", t.name, t.key_env)
    return out


def _error(status: int, code: str, message: str, field: str | None = None) -> Response[ErrorOut]:
    return Response(ErrorOut(code=code, message=message, field=field), status_code=status)


def _on_caller(_: Request, exc: CallerError) -> Response[ErrorOut]:
    return _error(exc.status, exc.code, str(exc), exc.field)


def _on_validation(_: Request, exc: ValidationException) -> Response[ErrorOut]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    key = first.get("key")
    message = str(first.get("message") or exc.detail)
    if key == "data" and first.get("source") == "body" and message == "'data'":  # no body at all: the framework's
        return _error(400, "invalid_json", "empty body: a JSON object is expected")  # KeyError, not a message
    named = schema_field(message)[1]  # a missing or unknown field is named in msgspec's message only
    if key == "data":  # the body as a whole
        key = named
    elif key and named and " - at `" not in message:  # in an object the key names: `profile` -> `profile.phone`
        key = f"{key}.{named}"
    return _error(422 if first else 400, "invalid_field" if first else "invalid_json", message, key)


def _on_http(_: Request, exc: HTTPException) -> Response[ErrorOut]:
    # The framework's own 400 is a body its decoder refused before any handler ran ("Input data was
    # truncated", "Number out of range" for 1e999): the caller's JSON, as every other JSON error.
    codes = {400: "invalid_json", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


def _on_storage(_: Request, exc: StorageError) -> Response[ErrorOut]:
    log.warning("campaigns.store.failed error=%s", exc)
    return _error(503, exc.code, "storage unavailable, retry later")


def _on_deep(_: Request, exc: RecursionError) -> Response[ErrorOut]:
    """A body nested deeper than the decoder recurses (``[[[[...`` 100,000 deep): the caller's fault."""
    return _error(400, "invalid_json", "the JSON body nests too deeply")


def _on_unexpected(_: Request, exc: Exception) -> Response[ErrorOut]:
    log.exception("campaigns.internal_error")
    return _error(500, "internal", "internal error (logged)")


def _on_other(_: Request, exc: CampaignError) -> Response[ErrorOut]:
    log.warning("campaigns.failed error=%r", exc)
    return _error(getattr(exc, "status", 500), getattr(exc, "code", "internal"), str(exc))


class BodyTimeout(CallerError):
    status = 408
    code = "body_timeout"


def body_deadline(app: Any, timeout: float) -> Any:
    """``app`` whose requests' bodies must arrive within ``timeout`` seconds in all: the waits for
    the client add up, the server's own time is not charged. Past it, the read raises
    ``BodyTimeout`` (408 ``body_timeout``, through the API's error handlers) and the server closes
    the connection (the rest of the body is never read). A slow client (slowloris) cannot hold a
    request open for ever."""

    async def bounded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        left, done = timeout, False

        async def timed() -> Any:
            nonlocal left, done
            if done:  # the body is in: a wait for the disconnect is not the client's debt
                return await receive()
            started = anyio.current_time()
            with anyio.move_on_after(left):
                event = await receive()
                left -= anyio.current_time() - started
                done = event.get("type") != "http.request" or not event.get("more_body", False)
                return event
            raise BodyTimeout(f"request body not received within {timeout:g} s")

        return await app(scope, timed, send)

    return bounded


def _next(ids: list[int], limit: int) -> int | None:
    return ids[-1] if len(ids) == limit else None


def webhook_secrets(settings: CampaignSettings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """tenant -> the secret the gateway signs what it POSTs to us with (``webhook_secret_env``)."""
    env = os.environ if environ is None else environ
    return {t.name: env[t.webhook_secret_env] for t in settings.tenants
            if t.webhook_secret_env and env.get(t.webhook_secret_env)}  # fmt: skip


class InboundIn(msgspec.Struct, frozen=True, kw_only=True):
    inbound: list[Inbound]


_inbound_decoder = msgspec.json.Decoder(InboundIn)


def create_app(audience: Audience, keys: Mapping[str, str], *, link: GatewayLink | None = None,
               secrets: Mapping[str, str] | None = None, extra_handlers: list[Any] | None = None,
               inbox: Any = None, health: Callable[[], dict[str, Any]] | None = None) -> Litestar:  # fmt: skip
    """The API over ``audience``; ``keys`` maps key SHA-256 -> tenant (``tenant_keys``). With ``link``,
    ``POST /v1/gateway/{tenant}/inbound`` takes the gateway's signed inbound webhooks (``secrets``).
    With ``inbox`` (``campaigns.service.inbox.Inbox``), the inbox routes; it reads the flow runtime
    from the app's ``state.reply_router`` (``NoRunWaits`` until one is registered)."""

    async def tenant(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() == "bearer" and key:
            digest = hashlib.sha256(key.strip().encode()).hexdigest()
            for known, name in keys.items():
                if hmac.compare_digest(known, digest):
                    return name
        raise NotAuthorizedException("a valid campaigns API key is required (Authorization: Bearer <key>)")

    # ---- subscribers -------------------------------------------------------------------------
    @post("/v1/subscribers", status_code=201)
    async def put_subscriber(tenant: Tenant, data: JSONBody[SubscriberIn]) -> Response[SubscriberOut]:
        """Create a subscriber, or update the one with this phone (201 created, 200 updated)."""
        out, created = await audience.put_subscriber(tenant, data)
        return Response(out, status_code=201 if created else 200)

    @get("/v1/subscribers")
    async def list_subscribers(tenant: Tenant, after: After = 0, limit: Limit = 100,
                               phone: Annotated[str | None, QueryParameter(max_length=40)] = None) -> SubscriberPage:
        """Page through the shop's subscribers by id, or find one by ``phone`` (any spelling)."""
        if phone is not None:
            sub = await audience.store_call("subscriber_by_phone", tenant, audience.phone(tenant, phone))
            return SubscriberPage(items=[sub] if sub is not None else [])
        items = await audience.subscribers(tenant, after=after, limit=limit)
        return SubscriberPage(items=items, next=_next([s.id for s in items], limit))

    @get("/v1/subscribers/{subscriber_id:int}")
    async def get_subscriber(tenant: Tenant, subscriber_id: Id) -> SubscriberOut:
        return await audience.subscriber_out(tenant, subscriber_id)

    @get("/v1/subscribers/{subscriber_id:int}/segments")
    async def get_member_segments(tenant: Tenant, subscriber_id: Id) -> MembershipOut:
        """The segments the subscriber is in now (kept current as events arrive), with since when."""
        rows = await audience.member_segments(tenant, subscriber_id)
        return MembershipOut(items=[Membership(segment_id=i, since=t) for i, t in rows])

    @post("/v1/subscribers/{subscriber_id:int}/tags", status_code=200)
    async def post_tags(tenant: Tenant, subscriber_id: Id, data: JSONBody[TagsIn]) -> TagsOut:
        return TagsOut(tags=await audience.set_tags(tenant, subscriber_id, data.add, data.remove))

    @post("/v1/subscribers/{subscriber_id:int}/consent", status_code=201)
    async def post_consent(tenant: Tenant, subscriber_id: Id, data: JSONBody[ConsentIn]) -> ConsentOut:
        entry, state = await audience.record_consent(tenant, subscriber_id, data)
        return ConsentOut(entry=entry, state=state, marketable=state == "confirmed")

    @get("/v1/subscribers/{subscriber_id:int}/consent")
    async def get_ledger(tenant: Tenant, subscriber_id: Id) -> LedgerOut:
        return LedgerOut(entries=await audience.ledger(tenant, subscriber_id))

    @get("/v1/subscribers/{subscriber_id:int}/consent/proof")
    async def get_proof(tenant: Tenant, subscriber_id: Id, format: FromQuery[Literal["json", "csv"]] = "json") -> Response[Any]:
        """The subscriber's consent proof for a dispute: every entry, the disclosure text, hashes re-checked."""
        p = await audience.proof(tenant, subscriber_id)
        if format == "csv":
            return Response(proofs.to_csv(p), media_type="text/csv; charset=utf-8", headers={
                "content-disposition": f'attachment; filename="consent-{tenant}-{subscriber_id}.csv"'})
        return Response(proofs.to_json(p), media_type="application/json")

    # ---- shop events -------------------------------------------------------------------------
    @post("/v1/events", status_code=202)
    async def post_event(tenant: Tenant, data: JSONBody[ShopEvent]) -> EventOut:  # type: ignore[valid-type]
        """One shop event (customer, order, checkout, fulfillment, activity, custom); idempotent by ``id``.
        Concurrent events share a transaction (group commit); answered after the commit."""
        event = decode_event(msgspec.json.encode(data))  # the layer's own checks (reserved names)
        applied: Applied = await audience.post_event(tenant, event)
        return EventOut(outcome=applied.outcome, subscriber_id=applied.subscriber_id)

    @post("/v1/events/bulk", status_code=202)
    async def post_events_bulk(tenant: Tenant, request: Request) -> BulkOut:
        """NDJSON, one event per line. Every line is checked first: one bad line -> 422 naming it
        (``lines[3].total``; the message lists every bad line) and nothing is stored. Answered once
        the events are committed with their aggregates; segment membership follows (within about a
        second under ``sluice serve``). Safe to retry: events are idempotent by id."""
        results = await audience.ingest_ndjson(tenant, await request.body())
        outcomes = [r.outcome for r in results]
        return BulkOut(applied=outcomes.count("applied"), duplicate=outcomes.count("duplicate"),
                       stale=outcomes.count("stale"))  # fmt: skip

    # ---- segments ----------------------------------------------------------------------------
    @post("/v1/segments", status_code=201)
    async def post_segment(tenant: Tenant, data: JSONBody[SegmentIn]) -> SegmentRow:
        """Create a segment; an invalid tree answers 422 with ``field`` the path of the node."""
        return await audience.put_segment(tenant, data.name, data.definition)

    @put("/v1/segments/{segment_id:int}")
    async def put_segment(tenant: Tenant, segment_id: Id, data: JSONBody[SegmentIn]) -> SegmentRow:
        await audience.segment(tenant, segment_id)
        return await audience.put_segment(tenant, data.name, data.definition, segment_id)

    @post("/v1/segments/validate", status_code=200)
    async def validate_segment(tenant: Tenant, data: JSONBody[SegmentCheckIn]) -> SegmentCheckOut:
        """Check a tree without saving it, and count it live."""
        from campaigns.core.segments import dump_segment

        seg = audience.parse(data.definition)
        return SegmentCheckOut(valid=True, definition=dump_segment(seg), count=await audience.count(tenant, seg))

    @get("/v1/segments")
    async def list_segments(tenant: Tenant, after: After = 0, limit: Limit = 100) -> SegmentPage:
        rows = await audience.store_call("segments", tenant, after=after, limit=limit)
        return SegmentPage(items=rows, next=_next([r.id for r in rows], limit))

    @get("/v1/segments/{segment_id:int}")
    async def get_segment(tenant: Tenant, segment_id: Id) -> SegmentRow:
        return (await audience.segment(tenant, segment_id))[0]

    @delete("/v1/segments/{segment_id:int}", status_code=204)
    async def delete_segment(tenant: Tenant, segment_id: Id) -> None:
        await audience.segment(tenant, segment_id)
        await audience.delete_segment(tenant, segment_id)

    @get("/v1/segments/{segment_id:int}/count")
    async def count_segment(tenant: Tenant, segment_id: Id) -> CountOut:
        _, seg = await audience.segment(tenant, segment_id)
        return CountOut(count=await audience.count(tenant, seg), at=audience.clock())

    @get("/v1/segments/{segment_id:int}/members")
    async def segment_members(tenant: Tenant, segment_id: Id, after: After = 0, limit: Limit = 100) -> MembersOut:
        _, seg = await audience.segment(tenant, segment_id)
        ids = await audience.members(tenant, seg, after=after, limit=limit)
        return MembersOut(items=ids, next=_next(ids, limit))

    @get("/v1/segments/{segment_id:int}/sample")
    async def segment_sample(tenant: Tenant, segment_id: Id, limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10) -> SampleOut:
        _, seg = await audience.segment(tenant, segment_id)
        ids = await audience.members(tenant, seg, after=0, limit=limit)
        subs = [(await audience.subscriber_out(tenant, i)).subscriber for i in ids]
        return SampleOut(items=subs)

    @post("/v1/gateway/{shop:str}/inbound", status_code=204, include_in_schema=False)
    async def gateway_inbound(shop: FromPath[str], request: Request) -> None:
        """The gateway's inbound webhook (its ``inbound_url``), signed like its other webhooks."""
        body = await request.body()
        secret = (secrets or {}).get(shop)
        header = request.headers.get(HEADER, "")
        if link is None or secret is None or shop not in link.clients or not verify(secret, header, body, audience.clock()):
            raise NotAuthorizedException("bad or missing Sluice-Signature")
        try:
            batch = _inbound_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"not an inbound batch: {exc}", code="invalid_json") from None
        for msg in batch.inbound:
            await link.handle(shop, msg)

    # ---- sign-up tools (public pages: the shop's visitors have no key) -------------------------------
    limits: dict[str, WindowLimit] = {}  # per shop, per client IP
    def _shop(shop: str) -> Any:
        t = audience.tenants.get(shop)
        if t is None:
            raise NotFound(f"no shop {shop!r}", code="shop_not_found")
        return t

    def _base(request: Request) -> str:
        return (audience.settings.public_url or str(request.base_url)).rstrip("/")

    @get("/signup/{shop:str}/form", media_type="text/html; charset=utf-8", include_in_schema=False)
    async def signup_form(shop: FromPath[str], request: Request) -> str:
        t = _shop(shop)
        return form_page(t.form, shop=t.signup.shop_name, action=f"{_base(request)}/signup/{shop}/subscribe")

    @get("/signup/{shop:str}/popup.js", media_type="text/javascript; charset=utf-8", include_in_schema=False)
    async def signup_popup(shop: FromPath[str], request: Request) -> Response[str]:
        t = _shop(shop)
        js = popup_script(t.form, tenant=shop, shop=t.signup.shop_name, action=f"{_base(request)}/signup/{shop}/subscribe")
        return Response(js, media_type="text/javascript; charset=utf-8", headers={"cache-control": "public, max-age=300"})

    @get("/signup/{shop:str}/qr.svg", media_type="image/svg+xml", include_in_schema=False)
    async def signup_qr(shop: FromPath[str]) -> Response[bytes]:
        t = _shop(shop)
        if not t.signup.sender:
            raise NotFound("this shop has no signup.sender (the number to text)", code="no_sender")
        buf = io.BytesIO()
        segno.make(sms_link(t.signup.sender, t.signup.keywords[0]), error="m").save(buf, kind="svg", scale=4)
        return Response(buf.getvalue(), media_type="image/svg+xml")

    @post("/signup/{shop:str}/subscribe", status_code=202, include_in_schema=False)
    async def signup_subscribe(shop: FromPath[str], request: Request) -> Response[Any]:
        """The form's and the pop-up's POST (JSON or urlencoded), with the visitor's evidence."""
        _shop(shop)
        raw = await request.body()
        ctype = request.headers.get("content-type", "")
        try:
            if ctype.startswith("application/x-www-form-urlencoded"):
                fields = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
                body = msgspec.convert(fields, FormIn)
            else:
                body = _form_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise _invalid(exc) from None
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"not JSON: {exc}", code="invalid_json") from None
        client = request.client.host if request.client else None
        limit = limits.setdefault(shop, WindowLimit(audience.tenants[shop].form.max_per_ip_per_hour, 3600.0))
        if not limit.allow(client or "?", audience.clock()):
            wait = int(limit.retry_after(client or "?", audience.clock())) + 1
            return Response(ErrorOut(code="rate_limited", message=f"too many sign-ups from here: retry in {wait} s"),
                            status_code=429, headers={"retry-after": str(wait), "access-control-allow-origin": "*"})
        evidence = Evidence(ip=client, user_agent=request.headers.get("user-agent", "")[:500] or None,
                            page_url=body.page_url or request.headers.get("referer"), form_id=body.form_id)  # fmt: skip
        state, entry = await audience.subscribe_form(shop, body, evidence)
        if entry is not None and link is not None:
            await link.request_confirmation(shop, entry.phone, key=f"campaigns:{shop}:confirm:entry-{entry.id}")
        message = {"confirmed": "You're already subscribed.",
                   "pending": "Almost done: reply Y to the text we sent you to confirm."}[state]  # fmt: skip
        headers = {"access-control-allow-origin": "*"}
        if ctype.startswith("application/x-www-form-urlencoded"):
            page = f"<!doctype html><meta charset=utf-8><title>Thanks</title><p>{html.escape(message)}</p>"
            return Response(page, status_code=202, media_type="text/html; charset=utf-8", headers=headers)
        return Response({"status": state, "message": message}, status_code=202, headers=headers)

    @get("/v1/signup/tools")
    async def signup_tools(tenant: Tenant, request: Request) -> SignupToolsOut:
        """The shop's sign-up tools: the hosted form, the pop-up script tag, the social link and its QR code."""
        t = _shop(tenant)
        base = f"{_base(request)}/signup/{tenant}"
        link_ = sms_link(t.signup.sender, t.signup.keywords[0]) if t.signup.sender else None
        return SignupToolsOut(form_url=f"{base}/form", popup_script=f'<script async src="{base}/popup.js"></script>',
                              sms_link=link_, qr_svg_url=f"{base}/qr.svg" if link_ else None,
                              keyword=t.signup.keywords[0])  # fmt: skip

    @post("/v1/subscribers/import", status_code=201)
    async def import_subscribers(tenant: Tenant, request: Request, file_name: FromQuery[str] = "") -> ImportResult:
        """CSV with a header row (see docs/CAMPAIGNS.md): all rows or none; a bad row -> 422 naming it."""
        charset = request.content_type[1].get("charset")  # text/csv; charset=windows-1252
        return await audience.import_csv(tenant, decode_csv(await request.body(), charset), file_name=file_name)

    @get("/healthz", dependencies={})
    async def healthz() -> dict[str, Any]:
        """Liveness; with flow worker processes (``flow_workers``), which are alive and how often restarted."""
        return {"status": "ok", **(health() if health is not None else {})}

    handlers = [put_subscriber, list_subscribers, get_subscriber, get_member_segments, post_tags, post_consent, get_ledger, get_proof,
                post_event, post_events_bulk, post_segment, put_segment, validate_segment, list_segments, get_segment,
                delete_segment, count_segment, segment_members, segment_sample, healthz, gateway_inbound, signup_form, signup_popup, signup_qr,
                signup_subscribe, signup_tools, import_subscribers, *(extra_handlers or [])]  # fmt: skip
    if inbox is not None:
        from campaigns.service.inbox import inbox_handlers

        handlers += inbox_handlers(inbox, lambda t, raw: audience.phone(t, raw))
    app = Litestar(
        route_handlers=handlers,
        dependencies={"tenant": Provide(tenant)},
        exception_handlers={CallerError: _on_caller, ValidationException: _on_validation, HTTPException: _on_http,
                            StorageError: _on_storage, CampaignError: _on_other, RecursionError: _on_deep,
                            Exception: _on_unexpected},  # fmt: skip
        openapi_config=OpenAPIConfig(title="Sluice campaigns API", version="0.1.0"),
        request_max_body_size=audience.settings.max_body_bytes,
        logging_config=None,
        middleware=[skip_json_bom],
    )
    if inbox is not None:
        inbox.bind(app.state)
    return app


_BOM = b"\xef\xbb\xbf"


def skip_json_bom(app: Any) -> Any:
    """A UTF-8 byte order mark at the start of a JSON body is skipped (RFC 8259 §8.1 lets a parser
    ignore it): a body saved by a Windows tool and sent with ``curl --data-binary @file`` was a 400
    ``invalid_json`` at byte 0, as on the gateway's API (which skips it too). Only ``application/json``
    bodies: bulk NDJSON and CSV read their own marks (CSV's may say UTF-16)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not any(k == b"content-type" and v.startswith(b"application/json")
                                              for k, v in scope["headers"]):  # fmt: skip
            return await app(scope, receive, send)
        first = True

        async def skipping() -> Any:
            nonlocal first
            event = await receive()
            if not first:
                return event
            first = False
            # the first bytes of the body, until 3 are in (a mark may come split)
            while event["type"] == "http.request" and event.get("more_body") and len(event.get("body", b"")) < 3:
                more = await receive()
                if more["type"] != "http.request":
                    return more
                event = {**more, "body": event.get("body", b"") + more.get("body", b"")}
            if event["type"] == "http.request" and event.get("body", b"").startswith(_BOM):
                event = {**event, "body": event["body"][3:]}
            return event

        return await app(scope, skipping, send)

    return wrapped
