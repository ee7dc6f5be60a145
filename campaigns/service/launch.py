"""Launching a campaign: the audience frozen, each text rendered, and the gateway sent NDJSON jobs.

Theory of operation (a crash at any point never sends a recipient twice):

1. ``freeze`` (one store transaction, in a worker thread): resolve the audience (segments included
   minus excluded, a list of ids, a CSV of phones), keep only marketable subscribers (confirmed
   opt-in), plan one ``send_at`` each (``core.schedule``), drop who got marketing in the last N hours
   (smart sending), assign A/B variants (``core.abtest``), render each text (``core.templates``) with
   its discount code and short links (``core.links``), and store all of it with its batch and slot.
   A campaign whose audience is already frozen is not planned again: a relaunch reads the same rows.
   The usual campaign (``set_based``: one text, no discount, no ``attr.NAME``) is frozen set-based
   (``Store.freeze_set``: planned and written in SQL, Python once per distinct zone and text; the
   same rows). Otherwise rendering is the launch's hot loop (``_plan``): ``TextCache`` renders each
   distinct text once and a recipient costs its codes and a join (exactly what rendering from
   scratch gives). A set-based freeze is *chunked* by ``Launcher`` (``freeze_chunk``): the plan of
   the whole audience and the first chunk of recipients in one transaction, the rest of the plan
   stored (``campaign_plan``), then each next chunk its own transaction (``freeze_step``), written
   while the batches already committed are posted; a relaunch continues from the stored plan.
   A launch with one send time whose links no recipient can change (``streamable``) is frozen as a
   *stream* instead (``stream_chunk``): the audience walked in subscriber id order (send order), a
   chunk at a time (``Store.freeze_stream``: the chunk's recipients, batches and the durable cursor
   in one transaction), each chunk posted while the next is frozen; a relaunch continues from the
   cursor (docs/ARCHITECTURE.md, "A streamed freeze", for what "frozen audience" means then).
2. ``submit``: each batch not yet answered is posted as one NDJSON job with
   ``Idempotency-Key: campaign-{id}-batch-{n}``. The body is rebuilt from the frozen rows, so it is
   the same bytes each time, and the gateway answers a retried key with its stored answer instead of
   sending again. A batch is read and posted only once its rows are committed (``_Frozen``). A batch's job id is stored once the gateway answers. The next batch's body is
   built (in a worker thread) while the gateway answers this one; posts start in batch order, one
   unanswered at a time unless ``post_window`` allows more.
3. The campaign is ``launched`` when every batch has its job. Pause, resume and cancel are posted to
   every job of the campaign.

Recipients outside an A/B test's share are frozen as ``held`` (batch -1): ``send_winner`` renders the
winner's text for them later (``campaigns/service/campaign_api.py``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
import msgspec

from campaigns.core import abtest, attribution, discounts, links, schedule, templates
from campaigns.core.imports import csv_header, parse_csv
from campaigns.core.model import Subscriber
from campaigns.errors import Conflict, GatewayError, InvalidInput, NotFound, nul_path, schema_field
from campaigns.service.gateway_client import GatewayClient, JobAnswer
from campaigns.store.base import Store
from campaigns.store.campaign_rows import (AudienceRow, BatchRow, CampaignRow, LinkRange, LinkRow, PlannedRecipient,
                                           RecipientRow, SetTexts, TextKey)  # fmt: skip

log = logging.getLogger(__name__)
T = TypeVar("T")
HELD = -1  # the batch of recipients kept for an A/B test's winner


# An id the stores can hold (both engines' 64-bit integers): 10**30 is refused when the definition is
# saved, naming ``audience.include[0]``, not an overflow (500) at launch.
StoredId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class AudienceSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    include: Annotated[list[StoredId], msgspec.Meta(max_length=1000)] = []  # segment ids (union)
    exclude: Annotated[list[StoredId], msgspec.Meta(max_length=1000)] = []  # segment ids (removed)
    subscribers: Annotated[list[StoredId], msgspec.Meta(max_length=1_000_000)] = []  # explicit subscriber ids
    csv: str | None = None  # a CSV with a `phone` column (numbers of existing subscribers)

    def __post_init__(self) -> None:
        if self.csv is not None:  # the header when saved (a CSV without a phone column never launches)
            try:
                csv_header(self.csv)
            except InvalidInput as exc:
                raise InvalidInput(str(exc), code=exc.code, field=f"audience.csv.{exc.field}") from None


def _csv_rows(spec: AudienceSpec) -> list[Any]:
    """The audience CSV's rows; a bad row is named where the definition holds it (``audience.csv.rows[3].phone``)."""
    try:
        return parse_csv(spec.csv or "")
    except InvalidInput as exc:
        raise InvalidInput(str(exc), code=exc.code, field=f"audience.csv.{exc.field}") from None


class VariantSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    template: Annotated[str, msgspec.Meta(min_length=1, max_length=1600)]
    weight: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 1.0


class AbSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    test_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    metric: abtest.Metric = "ctr"
    period_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 4 * 3600.0
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=0.5)] = 0.05
    min_per_variant: Annotated[int, msgspec.Meta(ge=1)] = 100
    fallback: Literal["control", "best", "none"] = "control"


class DiscountSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pool: str | None = None  # an imported pool: one code reserved per recipient
    pattern: str | None = None  # or minted per recipient: SAVE10-######


class CampaignSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A campaign's definition (stored as JSON with the campaign)."""

    sender: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    template: Annotated[str, msgspec.Meta(min_length=1, max_length=1600)] | None = None
    variants: list[VariantSpec] = []  # A/B: two or more (then ``template`` is unused)
    ab: AbSpec | None = None
    audience: AudienceSpec = AudienceSpec()
    schedule: schedule.Schedule = schedule.Now()
    smart_sending_hours: Annotated[float, msgspec.Meta(ge=0, le=24 * 30)] = 16.0  # 0: off
    values: dict[str, str] = {}  # shop-wide shortcode values: shop_name, product_offered, discount_url ...
    rules: templates.MessageRules = templates.MessageRules()
    link_domain: str | None = None  # short links on this domain (default: the tenant's short_domain)
    utm: dict[str, str] = {}
    link_ttl_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] | None = None  # None: links never expire
    discount: DiscountSpec | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000

    def __post_init__(self) -> None:
        if (nul := nul_path(self)) is not None:  # PostgreSQL cannot store a NUL: both engines refuse it
            raise InvalidInput(f"NUL character (U+0000) in {nul}", code="invalid_field", field=nul)
        if self.variants and len(self.variants) < 2:
            raise InvalidInput("give two or more variants, or one template", code="too_few_variants", field="variants")
        if not self.variants and self.template is None:
            raise InvalidInput("a campaign needs a template", code="template_required", field="template")
        if self.discount is not None and (self.discount.pool is None) == (self.discount.pattern is None):
            raise InvalidInput("a discount needs exactly one of pool and pattern", code="bad_discount", field="discount")
        if self.link_domain is not None:
            try:  # a domain that leaves no room for a code is refused when saved, not at launch
                links.code_length(self.link_domain)
            except InvalidInput as exc:
                raise InvalidInput(str(exc), code=exc.code, field="link_domain") from None
        if self.discount is not None and self.discount.pattern is not None:
            try:
                discounts.check_pattern(self.discount.pattern)
            except InvalidInput as exc:  # named where the definition holds it
                raise InvalidInput(str(exc), code=exc.code, field="discount.pattern") from None
        for i, text in enumerate(self.texts().values()):
            try:
                templates.compile_template(text)
            except templates.TemplateError as exc:
                raise InvalidInput(str(exc), code=exc.code, field=f"variants[{i}].template" if self.variants else "template") from exc

    def texts(self) -> dict[str | None, str]:
        """variant name (None without A/B) -> template source."""
        return {v.name: v.template for v in self.variants} if self.variants else {None: self.template or ""}

    def test(self, campaign_id: int, launched_at: float) -> abtest.AbTest | None:
        if not self.variants:
            return None
        ab = self.ab or AbSpec()
        return abtest.AbTest(campaign=str(campaign_id), variants=tuple(abtest.Variant(name=v.name, weight=v.weight)
                                                                        for v in self.variants),
                             test_share=ab.test_share, metric=ab.metric, decide_at=launched_at + ab.period_s,
                             alpha=ab.alpha, min_per_variant=ab.min_per_variant, fallback=ab.fallback)  # fmt: skip


def parse_spec(definition: Any) -> CampaignSpec:
    try:
        return msgspec.convert(definition, CampaignSpec)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc), code="invalid_campaign", field=schema_field(str(exc))[1]) from None


class TenantLinks(msgspec.Struct, frozen=True, kw_only=True):
    """What a tenant's short links and codes need: the domain and the secret the codes are keyed with."""

    domain: str
    key: bytes
    zone: str = "UTC"
    windows: attribution.Windows = attribution.Windows()  # the tenant's attribution windows
    click_min_delay: float = 10.0  # seconds around delivery when a hit is a preview fetch (TenantSettings)


class PreviewOut(msgspec.Struct, frozen=True, kw_only=True):
    """One subscriber's text per variant, measured by the gateway (``POST /v1/preview``)."""

    subscriber: int
    variant: str | None
    text: str
    encoding: str
    segments: int
    units: int
    prices: dict[str, int | None]


class LaunchOut(msgspec.Struct, frozen=True, kw_only=True):
    campaign: int
    status: str
    recipients: int  # frozen, to be sent now (held A/B recipients not counted)
    held: int
    batches: int
    accepted: int
    rejected: int


# ---- step 1: freeze (sync, runs in a worker thread) -----------------------------------------------


def resolve_audience(store: Store, tenant: str, spec: AudienceSpec) -> list[int]:
    """The subscriber ids of the audience, in id order (before consent and smart sending)."""
    ids: set[int] = set(spec.subscribers)
    for seg in spec.include:
        ids |= _members(store, tenant, seg)
    if spec.csv is not None:
        for row in _csv_rows(spec):
            sub = store.subscriber_by_phone(tenant, row.phone)
            if sub is not None:
                ids.add(sub.id)
    for seg in spec.exclude:
        ids -= _members(store, tenant, seg)
    return sorted(ids)


def _audience(store: Store, tenant: str, spec: AudienceSpec) -> tuple[list[AudienceRow], dict[int, float | None]]:
    """The marketable audience (``resolve_audience``'s, consent confirmed) and each one's last
    marketing send, read in one set-based query (``Store.launch_audience``)."""
    return store.launch_audience(tenant, spec.include, spec.exclude, _listed(store, tenant, spec))


def _listed(store: Store, tenant: str, spec: AudienceSpec) -> list[int]:
    """The ids an audience names outright (its subscribers and its CSV's known numbers), once its
    segments are known to exist."""
    for seg in [*spec.include, *spec.exclude]:
        if store.segment(tenant, seg) is None:
            raise NotFound(f"no segment {seg}", code="segment_not_found", field="audience")
    ids = list(spec.subscribers)
    if spec.csv is not None:
        for row in _csv_rows(spec):
            sub = store.subscriber_by_phone(tenant, row.phone)
            if sub is not None:
                ids.append(sub.id)
    return ids


def _members(store: Store, tenant: str, segment_id: int) -> set[int]:
    if store.segment(tenant, segment_id) is None:
        raise NotFound(f"no segment {segment_id}", code="segment_not_found", field="audience")
    out: set[int] = set()
    after = 0
    while page := store.members(tenant, segment_id, after=after, limit=5000):
        out.update(page)
        after = page[-1]
    return out


def _values(spec: CampaignSpec, sub: Subscriber, discount: str | None) -> dict[str, object]:
    return _values_of(spec, sub.first_name, sub.attributes, discount)


def _values_of(spec: CampaignSpec, first_name: str | None, attributes: Mapping[str, Any],
               discount: str | None) -> dict[str, object]:  # fmt: skip
    """The values a recipient's shortcodes read: the shop's, then the subscriber's own (``attr.NAME``
    reads ``attributes``, as ``templates.render_body`` looks it up), then the discount code."""
    values: dict[str, object] = dict(spec.values)
    if first_name:
        values["first_name"] = first_name
    if attributes:
        values["attributes"] = dict(attributes)
    for name, value in attributes.items():
        values[f"attr.{name}"] = value
    if discount is not None:
        values["discount_code"] = discount
    return values


def _discount(store: Store, tenant: str, spec: CampaignSpec, cid: int, sid: int, key: bytes, now: float) -> str | None:
    d = spec.discount
    if d is None:
        return None
    if d.pool is not None:
        code = store.reserve_discount(tenant, d.pool, cid, sid, now=now)
        if code is None:
            raise Conflict(f"discount pool {d.pool!r} has no code left", code="discount_pool_empty", field="discount.pool")
        return code
    assert d.pattern is not None
    code = discounts.discount_code(d.pattern, key=key, scope=f"{cid}:{sid}",
                                   exists=lambda c: store.discount_code_taken(tenant, c))  # fmt: skip
    store.record_pattern_code(tenant, "pattern", code, cid, sid, now=now)
    return code


def freeze(store: Store, tenant: str, camp: CampaignRow, tl: TenantLinks, now: float, *,
           lines: dict[int, list[tuple[str, str, str]]] | None = None, chunk: int | None = None,
           stream: int | None = None) -> bool:  # fmt: skip
    """Plan and store the campaign's recipients (False: they were frozen by an earlier launch).

    Set-based where it can be: the audience's marketable subscribers are read in one query (only
    the columns a launch needs, consent filtered in SQL), their last marketing sends in another;
    per recipient remains what Python must do: its variant, its text (``TextCache``: one render per
    distinct text) and its codes (a batch at a time: ``links.LinkCipher``). ``lines``: filled with
    each batch's ``(phone, text, tz)`` in slot order when this call froze them (the bodies are then
    built from memory: the same values ``Store.batch_lines`` reads back).

    ``chunk`` (recipients, rounded up to whole batches): a set-based freeze writes only the first
    chunk's recipients and stores the rest of the plan (``Store.freeze_set(chunk=...)``); each next
    chunk is ``freeze_step``. The plan is the whole audience's either way (smart sending, batches,
    slots, link numbers, texts): the rows are the same as one freeze's.

    ``stream`` (recipients, rounded up to whole batches): a launch that ``streamable`` allows is frozen
    as a stream instead: only its first chunk now (the audience as of ``now``, in subscriber id
    order), each next one by ``stream_step`` (docs/ARCHITECTURE.md, "A streamed freeze")."""
    if store.batches(tenant, camp.id) or store.campaign_recipients(tenant, camp.id, limit=1):
        return False
    spec = parse_spec(camp.definition)
    if stream is not None and streamable(store, tenant, spec, tl):
        _listed(store, tenant, spec.audience)  # its segments exist
        try:
            return _freeze_stream(store, tenant, camp, spec, tl, now, stream, lines=lines) != -1  # -1: frozen already
        except _NotSetBased:  # (ruled out by ``streamable``) nothing written: planned below
            pass
    if set_based(spec) and hasattr(store, "freeze_set"):
        try:
            return _freeze_set(store, tenant, camp, spec, tl, now, chunk)
        except _NotSetBased:  # recipients' URLs differ: each gets its own codes (planned below)
            pass
    audience, last = _audience(store, tenant, spec.audience)
    by_id = {a.id: a for a in audience}
    planned = [p for p in schedule.send_times(spec.schedule, [(a.id, a.time_zone) for a in audience], now=now,
                                              default_zone=tl.zone) if p.send_at is not None]  # fmt: skip
    if spec.smart_sending_hours > 0:
        planned, _skipped = schedule.smart_send(planned, last, hours=spec.smart_sending_hours)
    planned.sort(key=lambda p: (p.send_at, p.subscriber))
    domain = spec.link_domain or tl.domain
    start = store.link_range_end(tenant, links.code_length(domain)) if planned else 0
    for _attempt in range(3):
        rows, link_rows, rng = _plan(store, tenant, spec, camp, planned, by_id, last, tl, now, start)
        try:
            frozen = store.freeze_audience(tenant, camp.id, rows, link_rows, now=now, link_range=rng)
        except Conflict as exc:  # another launch of the tenant took these numbers meanwhile: plan again
            if exc.code != "link_range_taken" or rng is None:
                raise
            start = store.link_range_end(tenant, rng.length)
            continue
        if frozen and lines is not None:  # what each batch's body holds, as just stored (``batch_lines``)
            for r in rows:
                if r.batch != HELD:
                    lines.setdefault(r.batch, []).append((r.phone, r.text, r.tz))
        return frozen
    raise Conflict("link numbers kept being taken by other launches", code="link_range_taken")


class _NotSetBased(Exception):
    """The texts of a set-based freeze do not all link the same URLs (the planned path handles it)."""


def set_based(spec: CampaignSpec) -> bool:
    """Whether a launch of ``spec`` is frozen set-based (``Store.freeze_set``): one text (no A/B
    test), no discount code per recipient, no ``attr.NAME`` shortcode, so that a recipient's text
    depends only on its first name, language and whether it is its first marketing message."""
    if spec.variants or spec.discount is not None or spec.template is None:
        return False
    return not any(p.name.startswith("attr.") for p in templates.compile_template(spec.template).shortcodes)


def chunk_batches(spec: CampaignSpec, chunk: int) -> int:
    """A chunk of ``chunk`` recipients in whole batches of ``spec`` (at least one)."""
    return max(1, -(-chunk // spec.batch_size))


def freeze_step(store: Store, tenant: str, camp: CampaignRow, tl: TenantLinks, chunk: int) -> int | None:
    """Write the next chunk of a plan stored by ``freeze(chunk=...)`` (one transaction: its rows
    committed, then postable); the first batch still only planned after it, None when none is."""
    spec = parse_spec(camp.definition)
    rng = store.link_range(tenant, camp.id)
    codes = links.cipher_for(tl.key, rng.length).encode_block if rng is not None and rng.stride else None
    return store.freeze_next(tenant, camp.id, batches=chunk_batches(spec, chunk), batch_size=spec.batch_size, codes=codes)


def _freeze_set(store: Store, tenant: str, camp: CampaignRow, spec: CampaignSpec, tl: TenantLinks, now: float,
                chunk: int | None = None) -> bool:  # fmt: skip
    """``freeze`` set-based: the store plans and writes every recipient in SQL; this asks Python
    only once per distinct time zone (its send time: ``schedule.send_times``) and per distinct text
    (rendered by ``TextCache``, the codes by ``links.LinkCipher``): the rows ``_plan`` would write."""
    aud = spec.audience
    ids = _listed(store, tenant, aud)
    zones, texts, reads_name, expires = _set_parts(spec, tl, now)
    return store.freeze_set(tenant, camp.id, aud.include, aud.exclude, ids, batch_size=spec.batch_size,
                            smart_window_s=spec.smart_sending_hours * schedule.HOUR, reads_name=reads_name,
                            zones=zones, texts=texts, now=now, expires_at=expires,
                            chunk=None if chunk is None else chunk_batches(spec, chunk))  # fmt: skip


def streamable(store: Store, tenant: str, spec: CampaignSpec, tl: TenantLinks) -> bool:
    """Whether a launch of ``spec`` can be frozen as a stream (``freeze_stream``; docs/ARCHITECTURE.md,
    "A streamed freeze"): set-based, one send time for everyone (``now`` or ``at``: send order is
    subscriber id order), an audience of segments and ids (no CSV), and texts whose links and
    renderability cannot depend on the recipient, so that nothing a later chunk finds can fail a
    launch whose first batches are sent: the template rendered for probe names (none, two names) in
    every locale its rules name, first message or not, renders and links the same URLs each time;
    and no first name of the tenant's subscribers holds a URL (``Store.url_like_names``)."""
    if not set_based(spec) or not isinstance(spec.schedule, schedule.Now | schedule.At) or spec.audience.csv is not None:
        return False
    if not hasattr(store, "freeze_stream"):
        return False
    template = templates.compile_template(spec.template or "")
    locales = {None, *spec.rules.footers, *spec.rules.signatures}
    seen: set[tuple[str, ...]] = set()
    cache = TextCache(spec)
    try:
        links.code_length(spec.link_domain or tl.domain)
        for name in (None, "Ann", "Qzx"):
            for locale in locales:
                for first in (True, False):
                    seen.add(cache.skeleton(template, _values_of(spec, name, {}, None), locale, first).urls)
    except (templates.TemplateError, links.LinkError, InvalidInput):
        return False
    if len(seen) != 1:
        return False
    reads_name = any(p.name == "first_name" for p in template.shortcodes)
    return not (reads_name and store.url_like_names(tenant))


def send_time(spec: CampaignSpec, tl: TenantLinks, now: float) -> float:
    """The one send time of a streamed launch (``now`` or ``at``, never before ``now``)."""
    at = schedule.send_times(spec.schedule, [(0, None)], now=now, default_zone=tl.zone)[0].send_at
    assert at is not None, "now and at always send"
    return at


def stream_steps(store: Store, tenant: str, camp: CampaignRow, tl: TenantLinks, chunk: int,
                 lines: dict[int, list[tuple[str, str, str]]] | None = None) -> Callable[..., int | None]:  # fmt: skip
    """``stream_step`` for each next chunk of one launch (``step(now, start=None, begun=None)``), the
    chunks sharing one ``TextCache``: a first name's text is rendered once a launch, not once a chunk
    (one ``stream_steps`` a thread: two chunks at once each have their own)."""
    cache = TextCache(parse_spec(camp.definition))
    return lambda now, start=None, begun=None: stream_step(store, tenant, camp, tl, chunk, now, cache, lines, start, begun)


def _freeze_stream(store: Store, tenant: str, camp: CampaignRow, spec: CampaignSpec, tl: TenantLinks, now: float,
                   chunk: int, cache: TextCache | None = None,
                   lines: dict[int, list[tuple[str, str, str]]] | None = None, start: tuple[int, int] | None = None,
                   begun: Callable[[int, int, bool], None] | None = None) -> int | None:  # fmt: skip
    """The next chunk of a streamed freeze (the first one starts it: the audience as of ``now``); the
    first batch still to be frozen, None when the stream is done. A later chunk whose texts link other
    URLs (``streamable`` rules that out) is a ``Conflict``, raised before anything of it is written."""
    aud = spec.audience
    zones, texts, reads_name, expires = _set_parts(spec, tl, now, cache)
    return store.freeze_stream(tenant, camp.id, aud.include, aud.exclude, list(aud.subscribers),
                               batch_size=spec.batch_size, chunk=chunk_batches(spec, chunk),
                               smart_window_s=spec.smart_sending_hours * schedule.HOUR, reads_name=reads_name,
                               send_at=send_time(spec, tl, now), zones=zones, texts=texts, now=now,
                               expires_at=expires, lines=lines, **({"start": start, "begun": begun} if begun else {}))  # fmt: skip


def stream_step(store: Store, tenant: str, camp: CampaignRow, tl: TenantLinks, chunk: int, now: float,
                cache: TextCache | None = None, lines: dict[int, list[tuple[str, str, str]]] | None = None,
                start: tuple[int, int] | None = None, begun: Callable[[int, int, bool], None] | None = None) -> int | None:  # fmt: skip
    """Freeze the next chunk of a stream started by ``freeze(stream=...)`` (one transaction: its rows and
    batches committed, then postable); the first batch still to be frozen, None when none is.
    ``cache``: the texts rendered by the chunks before (``stream_steps``); ``lines``: filled with the
    chunk's batches' ``(phone, text, tz)`` once committed (as ``freeze`` fills it); ``start`` and
    ``begun``: a chunk started beside the one before (``Store.freeze_stream``)."""
    spec = cache.spec if cache is not None else parse_spec(camp.definition)
    for seg in [*spec.audience.include, *spec.audience.exclude]:
        if store.segment(tenant, seg) is None:
            raise NotFound(f"no segment {seg}", code="segment_not_found", field="audience")
    try:
        pending = _freeze_stream(store, tenant, camp, spec, tl, now, chunk, cache, lines, start, begun)
        return None if pending == -1 else pending
    except _NotSetBased:
        raise Conflict("a streamed launch's texts link other URLs than its first chunk's",
                       code="stream_links_differ") from None


def _set_parts(spec: CampaignSpec, tl: TenantLinks, now: float,
               shared: TextCache | None = None) -> tuple[Any, Any, bool, float | None]:  # fmt: skip
    """What a set-based freeze asks Python: ``zones`` (each distinct time zone's resolved zone and send
    time), ``texts`` (each distinct text's pieces and the codes), whether the template reads the
    first name, and when the links expire."""
    template = templates.compile_template(spec.template or "")
    domain = spec.link_domain or tl.domain
    expires = now + spec.link_ttl_days * 86_400 if spec.link_ttl_days is not None else None

    def zones(names: list[str | None]) -> dict[str | None, tuple[str, float | None]]:
        times = schedule.send_times(spec.schedule, list(enumerate(names)), now=now, default_zone=tl.zone)
        return {names[t.subscriber]: (t.zone, t.send_at) for t in times}

    def texts(keys: list[TextKey], first: Callable[[Sequence[TextKey]], tuple[TextKey, int]]) -> SetTexts:
        length = links.code_length(domain)  # a domain too long is the first error, as soon as anyone is sent
        cache = shared if shared is not None else TextCache(spec)
        pieces: dict[str, tuple[str, ...]] = {}
        targets: tuple[str, ...] | None = None
        failed: dict[str, templates.TemplateError] = {}
        base = f"{links.SCHEME}{domain}/"
        for k in keys:
            try:
                sk = cache.skeleton(template, _values_of(spec, k.first_name, {}, None), k.language, k.first)
            except templates.TemplateError as exc:
                failed[k.key] = exc
                continue
            urls = tuple(u if "://" in u else f"https://{u}" for u in sk.urls)
            if targets is None:
                targets = urls
            elif urls != targets:
                raise _NotSetBased
            pieces[k.key] = (*(piece + base for piece in sk.pieces[:-1]), sk.pieces[-1])
        if failed:  # the first recipient in send order whose text cannot be rendered, as ``_plan`` names it
            k, sid = first([k for k in keys if k.key in failed])
            exc = failed[k.key]
            raise InvalidInput(f"subscriber {sid}: {exc}", code=exc.code, field="template") from exc
        cipher = links.cipher_for(tl.key, length)

        def codes(start: int, count: int) -> bytes:
            if start + count > links.range_limit(length):  # ranges keep to their half (``links.in_range_half``)
                raise links.LinkError("code_space_exhausted", f"the {length}-character codes of {domain} are used up "
                                      f"(link number {start + count})")  # fmt: skip
            return cipher.encode_block(start, count)

        return SetTexts(pieces=pieces, targets=targets or (), length=length, codes=codes)

    return zones, texts, any(p.name == "first_name" for p in template.shortcodes), expires


def _plan(store: Store, tenant: str, spec: CampaignSpec, camp: CampaignRow, planned: Sequence[schedule.SendTime],
          by_id: Mapping[int, AudienceRow], last: Mapping[int, float | None], tl: TenantLinks, now: float,
          start: int = 0) -> tuple[list[PlannedRecipient], list[LinkRow], LinkRange | None]:  # fmt: skip
    """Each recipient's variant, batch, slot, text and links (the launch's hot loop).

    Links: recipients whose URLs are the campaign's (the first recipient's, as is usual: URLs from
    the campaign's values) get range codes, ``LinkCipher`` of link numbers from ``start`` (computed a
    batch at a time, no row, no collision check: docs/ARCHITECTURE.md); a recipient whose URLs differ
    (a per-subscriber attribute) gets HMAC codes and ``short_links`` rows as before."""
    test = spec.test(camp.id, camp.launched_at or now)
    compiled = {name: templates.compile_template(src) for name, src in spec.texts().items()}
    domain = spec.link_domain or tl.domain
    # A domain too long is the first error (before a bad URL or a missing value), as soon as anyone is sent.
    length = links.code_length(domain) if planned else 0
    expires = now + spec.link_ttl_days * 86_400 if spec.link_ttl_days is not None else None
    rows: list[PlannedRecipient] = []
    link_rows: list[LinkRow] = []
    taken: set[str] = set()
    cache = TextCache(spec)
    cid, key, batch_size = camp.id, tl.key, spec.batch_size
    cipher = links.cipher_for(key, length) if planned else None
    row_half = partial(links.in_range_half, key)  # a row code never decodes into the tenant's range half
    range_targets: tuple[str, ...] | None = None  # the URLs range codes stand for
    stride, last_range_batch = 0, -1
    bcodes: list[str] = []  # the range codes of the current batch, computed ahead in chunks
    joined: dict[int, tuple[links.Skeleton, str, str]] = {}  # id(skeleton) -> (it, text before the code, after)
    batch, idx, batch_at = -1, batch_size, None
    holes: list[int] = []  # slots of recipients without the range's codes (``LinkRange.holes``)
    for p in planned:
        a = by_id[p.subscriber]
        variant = abtest.assign(test, a.id) if test is not None else None
        if test is not None and variant is None:  # the rest: sent the winner later
            rows.append(PlannedRecipient(subscriber_id=a.id, phone=a.phone, variant=None, send_at=p.send_at or now,
                                         tz=p.zone, text="", batch=HELD, idx=a.id))  # fmt: skip
            continue
        code = _discount(store, tenant, spec, cid, a.id, key, now)
        sk, targets = cache.for_recipient(compiled[variant], a, code, last.get(a.id) is None)
        if idx >= batch_size or p.send_at != batch_at:
            batch, idx, batch_at = batch + 1, 0, p.send_at
            bcodes = []
        if not targets:
            codes: list[str] = []
            holes.append(batch * batch_size + idx)
        else:
            if range_targets is None:
                range_targets, stride = targets, len(targets)
            if targets is range_targets or targets == range_targets:
                assert cipher is not None
                need = (idx + 1) * stride
                if len(bcodes) < need:
                    base = start + batch * batch_size * stride
                    if base + batch_size * stride > links.range_limit(length):
                        raise links.LinkError("code_space_exhausted", f"the {length}-character codes of {domain} "
                                              f"are used up (link number {base + batch_size * stride})")  # fmt: skip
                    more = min(batch_size * stride - len(bcodes), max(need - len(bcodes), 2048 * stride))
                    bcodes += cipher.encode_range(base + len(bcodes), more)
                codes = bcodes[idx * stride:need]
                last_range_batch = batch
            else:
                holes.append(batch * batch_size + idx)  # this slot's range codes lead nowhere
                codes = links.mint_codes(sk, key, f"{cid}:{a.id}", length, taken, exists=row_half)
                link_rows += [LinkRow(code=c, tenant=tenant, campaign_id=cid, subscriber_id=a.id, target=t,
                                      created_at=now, expires_at=expires) for c, t in zip(codes, targets, strict=True)]  # fmt: skip
        if len(codes) == 1:  # the usual text, one link: its two halves joined once per skeleton
            halves = joined.get(id(sk))
            if halves is None or halves[0] is not sk:
                halves = joined[id(sk)] = (sk, f"{sk.pieces[0]}{links.SCHEME}{domain}/", sk.pieces[1])
            text = halves[1] + codes[0] + halves[2]
        else:
            text = links.fill(sk, domain, codes)
        rows.append(PlannedRecipient(subscriber_id=a.id, phone=a.phone, variant=variant, send_at=p.send_at or now,
                                     tz=p.zone, text=text, batch=batch, idx=idx))  # fmt: skip
        idx += 1
    rng = None
    if range_targets is not None and last_range_batch >= 0:
        rng = LinkRange(tenant=tenant, campaign_id=cid, length=length, start=start,
                        count=(last_range_batch + 1) * batch_size * stride, stride=stride, batch_size=batch_size,
                        targets=range_targets, created_at=now, expires_at=expires,
                        holes=tuple(h for h in holes if h < (last_range_batch + 1) * batch_size))  # fmt: skip
    if not link_rows:
        return rows, link_rows, rng
    # The HMAC codes: free in the store, and not a range code of this launch (the row would win).
    in_range = (lambda c: rng.start <= (cipher.decode(c) or -1) < rng.start + rng.count) if rng and cipher else (lambda c: False)  # noqa: E731
    clashes = store.existing_links([link.code for link in link_rows]) | {k.code for k in link_rows if in_range(k.code)}
    if clashes:
        rows, link_rows = _resolve_clashes(store, rows, link_rows, clashes, key, taken, domain, length, in_range)
    return rows, link_rows, rng


def _resolve_clashes(store: Store, rows: list[PlannedRecipient], link_rows: list[LinkRow], clashes: set[str],
                     key: bytes, taken: set[str], domain: str, length: int,
                     in_range: Callable[[str], bool] = lambda _c: False) -> tuple[list[PlannedRecipient], list[LinkRow]]:  # fmt: skip
    """Codes were minted against this launch's own codes only; the store's are checked in bulk, and
    the rare recipient whose code another campaign holds gets its codes again with the full check
    (the same text around them: its skeleton is recovered from the text and the links it was
    filled with, so nothing is rendered or reserved twice)."""
    redo = {link.subscriber_id for link in link_rows if link.code in clashes}
    mine: dict[int, list[LinkRow]] = {}
    kept = []
    for link in link_rows:  # a recipient's links are in the order of its URLs
        if link.subscriber_id in redo:
            mine.setdefault(link.subscriber_id, []).append(link)
        else:
            kept.append(link)
    out = []
    for r in rows:
        if r.subscriber_id in redo:
            old = mine[r.subscriber_id]
            sk = _skeleton_of(r.text, domain, old)
            codes = links.mint_codes(sk, key, f"{old[0].campaign_id}:{r.subscriber_id}", length, taken,
                                     exists=lambda c: c in clashes or in_range(c) or links.in_range_half(key, c) or store.link_exists(c))  # fmt: skip
            r = msgspec.structs.replace(r, text=links.fill(sk, domain, codes))
            kept += [msgspec.structs.replace(link, code=c) for link, c in zip(old, codes, strict=True)]
        out.append(r)
    return out, kept


def _skeleton_of(text: str, domain: str, filled: Sequence[LinkRow]) -> links.Skeleton:
    """The skeleton a text was filled from, given the links it was filled with (in URL order)."""
    pieces, rest = [], text
    for link in filled:
        head, _sep, rest = rest.partition(f"{links.SCHEME}{domain}/{link.code}")
        pieces.append(head)
    pieces.append(rest)
    return links.Skeleton(pieces=tuple(pieces), urls=tuple(link.target for link in filled))


class TextCache:
    """Each distinct rendering of one campaign's texts, split around its URLs, kept for the launch.

    A text depends only on its template, the values its shortcodes read (``templates.values_key``),
    the locale and whether it is the subscriber's first marketing message; recipients who share
    those (most of an audience: the same shop values, a few thousand first names) share one
    ``links.Skeleton``, so the template is rendered and its URLs found and checked once, and each
    recipient costs only its codes and a join (``links.splice``). Exact by construction: a miss is
    rendered by the same ``templates.render``. Bounded: cleared when it holds ``limit`` texts."""

    def __init__(self, spec: CampaignSpec, *, limit: int = 100_000) -> None:
        self.spec, self.limit = spec, limit
        self._texts: dict[tuple[Any, ...], links.Skeleton] = {}
        self._fast: dict[tuple[Any, ...], tuple[links.Skeleton, tuple[str, ...]]] = {}
        self._reads: dict[str, tuple[bool, bool, bool]] = {}

    def for_recipient(self, template: templates.Template, a: AudienceRow, discount: str | None,
                      first: bool) -> tuple[links.Skeleton, tuple[str, ...]]:  # fmt: skip
        """The recipient's skeleton and its URLs' targets, keyed by what its values are made of (the
        raw first name, attributes and discount code, where the template reads them: the rest of
        the values are the campaign's own), so a hit costs no values dict."""
        reads = self._reads.get(template.source)
        if reads is None:
            names = {p.name for p in template.shortcodes}
            reads = self._reads[template.source] = ("first_name" in names, any(n.startswith("attr.") for n in names),
                                                    "discount_code" in names)  # fmt: skip
        key = (template.source, a.language, first, a.first_name if reads[0] else None,
               a.attributes if reads[1] else None, discount if reads[2] else None)  # fmt: skip
        hit = self._fast.get(key)
        if hit is None:
            attrs = msgspec.json.decode(a.attributes) if a.attributes and a.attributes != "{}" else {}
            values = _values_of(self.spec, a.first_name, attrs, discount)
            try:
                sk = self.skeleton(template, values, a.language, first)
            except templates.TemplateError as exc:
                raise InvalidInput(f"subscriber {a.id}: {exc}", code=exc.code, field="template") from exc
            hit = (sk, tuple(u if "://" in u else f"https://{u}" for u in sk.urls))
            if len(self._fast) >= self.limit:
                self._fast.clear()
            self._fast[key] = hit
        return hit

    def skeleton(self, template: templates.Template, values: Mapping[str, object], locale: str | None,
                 first: bool) -> links.Skeleton:  # fmt: skip
        key = (template.source, locale, first, templates.values_key(template, values))
        sk = self._texts.get(key)
        if sk is None:
            rendered = templates.render(template, values, rules=self.spec.rules, locale=locale, first_message=first,
                                        find=False)  # fmt: skip
            sk = links.skeleton(rendered.text)
            if len(self._texts) >= self.limit:
                self._texts.clear()
            self._texts[key] = sk
        return sk


def render_for(store: Store, tenant: str, spec: CampaignSpec, cid: int, sub: Subscriber, template: templates.Template,
               tl: TenantLinks, now: float, *, first: bool, taken: set[str],
               exists: Callable[[str], bool] | None = None, cache: TextCache | None = None) -> tuple[str, list[LinkRow]]:  # fmt: skip
    """One recipient's final text (signature, footer, discount code, short links) and its links
    (``cache``: the launch's rendered texts, reused across recipients; same result as without)."""
    code = _discount(store, tenant, spec, cid, sub.id, tl.key, now)
    values = _values(spec, sub, code)
    links.code_length(spec.link_domain or tl.domain)  # a domain too long is the first error, before a bad URL
    try:
        if cache is not None and cache.spec is spec:
            sk = cache.skeleton(template, values, sub.language, first)
        else:
            sk = links.skeleton(templates.render(template, values, rules=spec.rules, locale=sub.language,
                                                 first_message=first, find=False).text)  # fmt: skip
    except templates.TemplateError as exc:
        raise InvalidInput(f"subscriber {sub.id}: {exc}", code=exc.code, field="template") from exc
    short = links.splice(sk, domain=spec.link_domain or tl.domain, key=tl.key, scope=f"{cid}:{sub.id}",
                         exists=lambda c: links.in_range_half(tl.key, c) or (exists(c) if exists is not None else (
                             c in taken or store.link_exists(c))))  # fmt: skip
    taken.update(link.code for link in short.links)
    expires = now + spec.link_ttl_days * 86_400 if spec.link_ttl_days is not None else None
    rows = [LinkRow(code=link.code, tenant=tenant, campaign_id=cid, subscriber_id=sub.id, target=link.target,
                    created_at=now, expires_at=expires) for link in short.links]  # fmt: skip
    return short.text, rows


# ---- step 2: submit -------------------------------------------------------------------------------

_line = msgspec.json.Encoder()


def job_body(camp: CampaignRow, spec: CampaignSpec, batch: int, send_at: float, recipients: Sequence[RecipientRow],
             callback_url: str | None) -> bytes:  # fmt: skip
    """The batch's NDJSON job: the same bytes for the same frozen rows (the Idempotency-Key's body)."""
    return job_body_of(head_line(camp, spec, batch, send_at, callback_url), [(r.phone, r.text, r.tz) for r in recipients])


class _Vars(msgspec.Struct, gc=False):
    body: str


class _Line(msgspec.Struct, gc=False):
    """One recipient's NDJSON line (``{"to", "vars": {"body"}, "tz"}``: the order a dict gave)."""

    to: str
    vars: _Vars
    tz: str


def head_line(camp: CampaignRow, spec: CampaignSpec, batch: int, send_at: float, callback_url: str | None) -> bytes:
    head: dict[str, Any] = {"from": spec.sender, "template": "{body}", "category": "marketing", "send_at": send_at,
                            "reference": f"campaign:{camp.id}:batch:{batch}"}  # fmt: skip
    if callback_url:
        head["callback_url"] = callback_url
    return _line.encode(head)


def job_body_of(head: bytes, lines: Sequence[tuple[str, str, str]]) -> bytes:
    """The job's bytes from its head line and its recipients' ``(phone, text, tz)`` in slot order."""
    return head + b"\n" + _line.encode_lines([_Line(to, _Vars(text), tz) for to, text, tz in lines])


def idempotency_key(campaign_id: int, batch: int) -> str:
    return f"campaign-{campaign_id}-batch-{batch}"


DEFAULT_FREEZE_CHUNK = 20_000  # recipients a chunk of a freeze (serve's default on PostgreSQL)
DEFAULT_STREAM_CHUNK = 20_000  # recipients a chunk of a streamed freeze (both engines)
ANSWERS_AHEAD = 4  # batches posted whose answers are not stored yet, at most (a default stream chunk's batches)
POST_WINDOW = 1  # batches in flight at once (1: each posted once the one before is answered; docs/BENCHMARKS.md:
# 2 measured no gain on a loaded machine, launch7)


def freeze_chunk_for(setting: int | None, engine: str) -> int | None:
    """``campaigns.launch_freeze_chunk`` as the launcher takes it (None: one transaction). Unset,
    chunks on PostgreSQL only: on SQLite's one writer they measured slower (docs/BENCHMARKS.md)."""
    if setting is None:
        return None if engine == "sqlite" else DEFAULT_FREEZE_CHUNK
    return setting or None


def stream_chunk_for(setting: int | None) -> int | None:
    """``campaigns.launch_stream_chunk`` as the launcher takes it (None: no streamed freeze)."""
    return DEFAULT_STREAM_CHUNK if setting is None else (setting or None)


class _Frozen:
    """How far a freeze in chunks has written its recipients: ``pending`` is the first batch still
    only planned (None: every batch is written). ``wait(batch)`` returns once that batch's rows are
    committed, or raises the freeze's failure."""

    def __init__(self, pending: int | None) -> None:
        self.pending, self.failed = pending, None
        self._moved = anyio.Event()
        self.taken, self._took = -1, anyio.Event()  # the last batch whose body is being built

    def took(self, batch: int) -> None:
        self.taken = batch
        self._took.set()
        self._took = anyio.Event()

    async def wait_taken(self, batch: int) -> None:
        """Until the bodies have reached ``batch`` (or the submit is over: ``finish``)."""
        while self.taken < batch:
            await self._took.wait()

    def finish(self) -> None:
        self.took(1 << 62)

    def advance(self, pending: int | None) -> None:
        self.pending = pending
        self._moved.set()
        self._moved = anyio.Event()

    def fail(self, exc: BaseException) -> None:
        self.failed = exc
        self._moved.set()

    async def wait(self, batch: int) -> None:
        while self.pending is not None and batch >= self.pending:
            if self.failed is not None:
                raise self.failed
            await self._moved.wait()


class _Posting:
    """The posts of one ``_submit``: at most ``window`` in flight (``slots``: a slot is free again once
    the gateway has answered, before the answer is stored), the answers still to store (``answers``;
    at most ``ANSWERS_AHEAD`` posts answered or in flight whose answer is not stored: ``unstored``),
    and whether the launch stopped (a cancel) or failed (the first failure, raised once the posts in
    flight are answered and their answers stored)."""

    def __init__(self, window: int) -> None:
        self.slots = anyio.Semaphore(max(1, window))
        self.stopped = False
        self.failed: BaseException | None = None
        # the gateway's answers, stored in order by ``Launcher._store_answers`` beside the next posts
        self.answers, self.answered = anyio.create_memory_object_stream[tuple[BatchRow, JobAnswer]](math.inf)
        self.unstored = anyio.Semaphore(ANSWERS_AHEAD)  # posts whose answer is not stored yet

    def fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc

    @property
    def done(self) -> bool:
        return self.stopped or self.failed is not None


def _timed(fn: Callable[..., T], *args: Any, **kw: Any) -> tuple[T, float]:
    """``fn(...)`` and the CPU time of the thread that ran it (the freeze's own, apart from the
    gateway's work in the same process)."""
    c0 = time.thread_time()
    return fn(*args, **kw), time.thread_time() - c0


class Launcher:
    """The campaign service's sending side: launch, pause/resume/cancel, states back from the gateway.

    ``freeze_chunk``: a set-based freeze writes its recipients this many at a time (whole batches),
    each chunk one transaction, and a batch is posted as soon as its chunk is committed, while the
    next chunk is written (docs/ARCHITECTURE.md, "A chunked freeze"); None: in one transaction.
    ``freeze_store``: where the chunks are written (a connection of their own; default ``store``).
    ``post_window``: batches posted and not yet answered at once (the gateway ingests the next one
    while it writes and answers this one; docs/ARCHITECTURE.md, "Which core does what during a launch").
    ``stream_store``: a second connection for a stream's chunks; given, two chunks are frozen at once,
    each on its own connection, the next one started once this one's audience is known
    (docs/ARCHITECTURE.md, "Two chunks of a stream at once"; PostgreSQL: the server's work on two
    cores)."""

    def __init__(self, store: Store, clients: Mapping[str, GatewayClient], tenants: Mapping[str, TenantLinks],
                 clock: Callable[[], float], *, callback_urls: Mapping[str, str] | None = None,
                 freeze_chunk: int | None = DEFAULT_FREEZE_CHUNK, freeze_store: Store | None = None,
                 post_window: int = POST_WINDOW, stream_chunk: int | None = DEFAULT_STREAM_CHUNK,
                 stream_store: Store | None = None) -> None:  # fmt: skip
        self.store, self.clients, self.tenants, self.clock = store, clients, tenants, clock
        self.post_window, self.stream_chunk, self.stream_store = post_window, stream_chunk, stream_store
        self.freeze_chunk, self.freeze_store = freeze_chunk, freeze_store or store
        set_keys = getattr(store, "set_link_keys", None)  # range codes are decoded with the tenants' keys
        if set_keys is not None:
            set_keys({name: t.key for name, t in tenants.items()})
        self.callback_urls = dict(callback_urls or {})

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kw))

    async def campaign(self, tenant: str, campaign_id: int) -> CampaignRow:
        camp = await self._run(self.store.campaign, tenant, campaign_id)
        if camp is None:
            raise NotFound(f"no campaign {campaign_id}", code="campaign_not_found")
        return camp

    async def create(self, tenant: str, name: str, definition: Any) -> CampaignRow:
        parse_spec(definition)
        return await self._run(self.store.put_campaign, tenant, name, definition, now=self.clock())

    def _client(self, tenant: str) -> GatewayClient:
        client = self.clients.get(tenant)
        if client is None:
            raise Conflict(f"tenant {tenant!r} has no gateway key", code="no_gateway_link")
        return client

    async def launch(self, tenant: str, campaign_id: int) -> LaunchOut:
        """Freeze (once) and submit every batch not yet answered: safe to call again after a crash."""
        camp = await self.campaign(tenant, campaign_id)
        client, tl = self._client(tenant), self.tenants.get(tenant)
        if tl is None:
            raise Conflict(_no_links(tenant), code="no_link_settings", field="short_domain")
        if camp.status in ("canceled", "paused"):
            raise Conflict(f"the campaign is {camp.status}", code="campaign_status", field="status")
        if camp.status == "launched":  # every batch answered: nothing to do (a retried launch request)
            return await self.launch_state(tenant, campaign_id)
        now = self.clock()
        camp = await self._run(self.store.set_campaign_status, tenant, campaign_id, "launching", now=now)
        lines: dict[int, list[tuple[str, str, str]]] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        _, own = await self._run(_timed, partial(freeze, lines=lines, chunk=self.freeze_chunk, stream=self.stream_chunk),
                                 self.store, tenant, camp, tl, now)  # fmt: skip
        size = parse_spec(camp.definition).batch_size
        step: Callable[[], int | None] = partial(freeze_step, self.freeze_store, tenant, camp, tl, self.freeze_chunk or 1)
        pending, ahead, rest = None, None, None
        if hasattr(self.store, "stream_pending"):  # a stream started now or by an earlier launch (continued either way)
            pending = await self._run(self.store.stream_pending, tenant, campaign_id, size)
            if pending is not None:
                chunk = self.stream_chunk or DEFAULT_STREAM_CHUNK
                step = partial(stream_steps(self.freeze_store, tenant, camp, tl, chunk, lines), now)
                ahead = chunk_batches(parse_spec(camp.definition), chunk)
                if self.stream_store is not None:  # two chunks at once, a connection each
                    steps = [stream_steps(s, tenant, camp, tl, chunk, lines) for s in (self.freeze_store, self.stream_store)]
                    rest = partial(self._stream_rest, tenant, camp, steps, now, size, ahead)
        if pending is None and self.freeze_chunk is not None:
            pending = await self._run(self.store.plan_pending, tenant, campaign_id, size)
        gate = _Frozen(pending)
        t1, c1 = time.perf_counter(), time.process_time()
        log.info("campaign.frozen tenant=%s campaign=%d seconds=%.3f process_cpu_s=%.3f thread_cpu_s=%.3f pending_from=%s",
                 tenant, campaign_id, t1 - t0, c1 - c0, own, gate.pending)  # fmt: skip
        failed: Exception | None = None
        async with anyio.create_task_group() as tg:
            if gate.pending is not None and rest is not None:
                tg.start_soon(rest, gate)
            elif gate.pending is not None:
                tg.start_soon(self._freeze_rest, tenant, camp, step, gate, ahead)
            try:
                await self._submit(client, tenant, camp, lines, gate)
            except Exception as exc:  # raised as itself, not inside the task group's ExceptionGroup
                failed = exc
                tg.cancel_scope.cancel()
            finally:
                gate.finish()  # no more bodies: a freeze still under way (a cancel) writes the rest unheld
        if failed is not None:
            raise failed
        log.info("campaign.submitted tenant=%s campaign=%d seconds=%.3f process_cpu_s=%.3f", tenant, campaign_id,
                 time.perf_counter() - t1, time.process_time() - c1)  # fmt: skip
        return await self.launch_state(tenant, campaign_id)

    async def _freeze_rest(self, tenant: str, camp: CampaignRow, step: Callable[[], int | None], gate: _Frozen,
                           ahead: int | None = None) -> None:  # fmt: skip
        """Write the remaining chunks (of the stored plan, or of the stream: ``step``) one transaction
        each, moving ``gate`` on after each commit; a failure is handed to the batches waiting for it
        (a relaunch continues from the plan or the stream's cursor). ``ahead`` (batches): a chunk is
        frozen only once the bodies have reached that close to the batches written (a stream): each
        chunk's transaction holds the store, so a freeze racing ahead would hold up every read and
        answer of the batches being posted (SQLite: one connection)."""
        t0, own, chunks = time.perf_counter(), 0.0, 0
        try:
            while gate.pending is not None:
                if ahead is not None:
                    await gate.wait_taken(gate.pending - ahead)
                pending, cpu = await self._run(_timed, step)
                own, chunks = own + cpu, chunks + 1
                gate.advance(pending)
        except Exception as exc:  # noqa: BLE001  # raised by the submit side, which waits on it
            gate.fail(exc)
            return
        log.info("campaign.frozen.chunks tenant=%s campaign=%d chunks=%d seconds=%.3f thread_cpu_s=%.3f", tenant,
                 camp.id, chunks, time.perf_counter() - t0, own)  # fmt: skip

    async def _stream_rest(self, tenant: str, camp: CampaignRow, steps: Sequence[Callable[..., int | None]], now: float,
                           size: int, ahead: int, gate: _Frozen) -> None:  # fmt: skip
        """A stream's remaining chunks, two at once: chunk k+1 starts (on the other connection, from
        where chunk k's audience ends) once chunk k's audience is known, while chunk k writes its rows;
        its cursor update waits for chunk k's commit (``Store.freeze_stream``). ``gate`` moves on in
        chunk order; a failure is handed to the batches waiting for it (the chunk after a failed one
        fails too: nothing is committed past a chunk that was not). The freeze stays within two
        chunks of the bodies (``ahead`` batches a chunk)."""
        t0, spent = time.perf_counter(), [0.0, 0, False]  # thread CPU, chunks written, a chunk failed
        start: tuple[int, int] | None = None
        first: int | None = gate.pending
        before: anyio.Event | None = None
        async with anyio.create_task_group() as tg:
            k = 0
            while first is not None:
                await gate.wait_taken(first - 2 * ahead)
                known, finished, nxt = anyio.Event(), anyio.Event(), []
                tg.start_soon(self._stream_chunk, steps[k % len(steps)], now, start, known, nxt, before, finished, gate,
                              spent)  # fmt: skip
                await known.wait()
                start = None if spent[2] else nxt[0]  # a failure: no more chunks (the next one is refused anyway)
                first, before, k = None if start is None else start[1] // size, finished, k + 1
        if gate.failed is None:
            log.info("campaign.frozen.chunks tenant=%s campaign=%d chunks=%d seconds=%.3f thread_cpu_s=%.3f at_once=%d",
                     tenant, camp.id, spent[1], time.perf_counter() - t0, spent[0], len(steps))  # fmt: skip

    async def _stream_chunk(self, step: Callable[..., int | None], now: float, start: tuple[int, int] | None,
                            known: anyio.Event, nxt: list[tuple[int, int] | None], before: anyio.Event | None,
                            finished: anyio.Event, gate: _Frozen, spent: list[Any]) -> None:  # fmt: skip
        """One chunk of ``_stream_rest``: ``known`` set once its audience is (``nxt``: where the next chunk
        starts, None when this is the last or it failed first), ``gate`` moved on once the chunk before
        has moved it (``before``), then ``finished``; ``spent``: the thread CPU, the chunks written, and
        whether one failed (then no further chunk is started)."""

        def begun(last: int, slot: int, done: bool) -> None:  # in the chunk's thread, inside its transaction
            nxt.append(None if done else (last, slot))
            anyio.from_thread.run_sync(known.set)

        failure: BaseException | None = None
        pending: int | None = None
        try:
            pending, cpu = await self._run(_timed, step, now, start, begun)
            spent[0], spent[1] = spent[0] + cpu, spent[1] + 1
        except Exception as exc:  # noqa: BLE001  # raised by the submit side, which waits on it
            failure, spent[2] = exc, True
        if not nxt:  # failed (or found the stream done) before its audience was known: no next chunk
            nxt.append(None)
        known.set()
        if before is not None:
            await before.wait()
        if failure is not None or gate.failed is not None:
            if gate.failed is None:
                gate.fail(failure)  # type: ignore[arg-type]
        else:
            gate.advance(pending)
        finished.set()

    async def _submit(self, client: GatewayClient, tenant: str, camp: CampaignRow,
                      lines: dict[int, list[tuple[str, str, str]]] | None = None, gate: _Frozen | None = None) -> None:  # fmt: skip
        """Post every batch not yet answered, in order, up to ``post_window`` of them in flight at once.
        The next batch's rows are read and its body built in a worker thread while the gateway answers
        the ones in flight (the bodies are the same bytes as built one by one; posts are started in
        batch order). A batch is read only once its rows are committed (``gate``: a freeze in chunks
        still writing). A cancel seen before a post, or after an answer, stops the launch: no post is
        started after it, the ones in flight are answered and their jobs canceled (``_post``). A
        failure is raised as itself once the posts in flight are answered; nothing is started after it."""
        spec = parse_spec(camp.definition)
        send, receive = anyio.create_memory_object_stream[tuple[BatchRow, bytes | BaseException]](1)
        posting = _Posting(self.post_window)
        with receive, posting.answered:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._bodies, send, tenant, camp, spec, lines or {}, gate or _Frozen(None))
                async with anyio.create_task_group() as stored:  # over once every answer is stored
                    stored.start_soon(self._store_answers, posting, client, tenant, camp)
                    with posting.answers:  # closed once every post is answered: the answers then end
                        await self._post_all(posting, receive, client, tenant, camp)
                tg.cancel_scope.cancel()  # every post answered: no more bodies needed
        if posting.failed is not None:
            raise posting.failed
        if posting.stopped:
            return
        if (await self.campaign(tenant, camp.id)).status == "launching":
            await self._run(self.store.set_campaign_status, tenant, camp.id, "launched", now=self.clock())

    async def _post_all(self, posting: _Posting, bodies: MemoryObjectReceiveStream[tuple[BatchRow, bytes | BaseException]],
                        client: GatewayClient, tenant: str, camp: CampaignRow) -> None:  # fmt: skip
        """Start a post for each body in batch order, at most the window in flight; over once every
        post started is answered (not yet stored: ``_store_answers``)."""
        async with anyio.create_task_group() as posts:
            async for b, body in bodies:
                if not isinstance(body, bytes):
                    posting.fail(body)
                    break
                await posting.unstored.acquire()
                await posting.slots.acquire()
                if not posting.done and await self._canceled(tenant, camp):  # canceled during the launch
                    posting.stopped = True
                if posting.done:
                    posting.slots.release()
                    posting.unstored.release()
                    break
                # Checked here, so that the posts reach the gateway in batch order (a task's
                # own check could let batch k+1 overtake batch k).
                posts.start_soon(self._post_in_window, posting, client, tenant, camp, b, body)

    async def _post_in_window(self, posting: _Posting, client: GatewayClient, tenant: str, camp: CampaignRow,
                              b: BatchRow, body: bytes) -> None:  # fmt: skip
        try:
            answer = await client.submit_job(body, key=idempotency_key(camp.id, b.batch))
            posting.answers.send_nowait((b, answer))
        except Exception as exc:  # noqa: BLE001  # raised by ``_submit`` once the others are answered
            posting.fail(exc)
            posting.unstored.release()  # no answer to store
        finally:
            posting.slots.release()

    async def _store_answers(self, posting: _Posting, client: GatewayClient, tenant: str, camp: CampaignRow) -> None:
        """Store each answer in the order the gateway gave them, beside the next posts: on SQLite a
        freeze chunk holds the store's one connection for a while, and a post waiting for the answer
        before it to be written waited for that chunk (docs/ARCHITECTURE.md, "A launch's answers off its
        critical path"). A crash before an answer is stored is what it was: the relaunch posts the batch
        again under its Idempotency-Key and stores the stored job's answer."""
        async for b, answer in posting.answered:
            try:
                if not await self._answered(client, tenant, camp, b, answer):
                    posting.stopped = True
            except Exception as exc:  # noqa: BLE001  # raised by ``_submit`` once the others are stored
                posting.fail(exc)
            finally:
                posting.unstored.release()

    async def _bodies(self, send: MemoryObjectSendStream[tuple[BatchRow, bytes | BaseException]], tenant: str,
                      camp: CampaignRow, spec: CampaignSpec, lines: dict[int, list[tuple[str, str, str]]],
                      gate: _Frozen) -> None:  # fmt: skip
        """Build the bodies of the batches not yet answered, in order, each once its chunk is committed
        (from ``lines`` when this launch just froze them, else read back); a failure is handed on to
        ``_submit`` (raised there as itself)."""
        async with send:
            seen = -1
            while True:
                try:
                    await gate.wait(seen + 1)  # the next batch is written, or the freeze is done
                    pending = gate.pending
                    todo = [b for b in await self._run(self.store.batches, tenant, camp.id)
                            if b.batch > seen and (pending is None or b.batch < pending)]  # fmt: skip
                except Exception as exc:
                    await send.send((BatchRow(campaign_id=camp.id, batch=seen + 1, send_at=0.0, size=0, job_id=None, accepted=None), exc))
                    return
                for b in todo:
                    seen = b.batch
                    gate.took(b.batch)
                    if b.job_id is not None:
                        continue
                    try:
                        body: bytes | BaseException = await self._run(self._body, tenant, camp, spec, b, lines.pop(b.batch, None))
                    except Exception as exc:
                        body = exc
                    await send.send((b, body))
                    if not isinstance(body, bytes):
                        return
                if pending is None:
                    return

    def _body(self, tenant: str, camp: CampaignRow, spec: CampaignSpec, b: BatchRow,
              lines: list[tuple[str, str, str]] | None = None) -> bytes:  # fmt: skip
        # Only what the body holds, read as tuples (``job_body`` of the batch's rows, the same bytes).
        if lines is None:
            lines = self.store.batch_lines(tenant, camp.id, b.batch)
        return job_body_of(head_line(camp, spec, b.batch, b.send_at, self.callback_urls.get(tenant)), lines)

    async def _canceled(self, tenant: str, camp: CampaignRow) -> bool:
        # the status as committed, read without waiting for a freeze chunk (``Store.campaign_status``)
        return await self._run(self.store.campaign_status, tenant, camp.id) == "canceled"

    async def _answered(self, client: GatewayClient, tenant: str, camp: CampaignRow, b: BatchRow,
                        answer: JobAnswer) -> bool:  # fmt: skip
        """Store one batch's answer, then its job canceled at once if the campaign was canceled
        meanwhile (then False: send no more). In that order: a cancel (``control``) stores the status,
        then cancels the jobs it reads, so a job is canceled by one of the two."""
        rejected = [r.index for r in answer.rejected]
        await self._run(self.store.batch_submitted, tenant, camp.id, b.batch, job_id=answer.id,
                        accepted=answer.accepted, rejected=rejected, now=self.clock())  # fmt: skip
        log.info("campaign.batch.submitted tenant=%s campaign=%d batch=%d job=%s accepted=%d", tenant, camp.id,
                 b.batch, answer.id, answer.accepted)  # fmt: skip
        if answer.id and await self._canceled(tenant, camp):
            await client.job_action(answer.id, "cancel")  # canceled while this batch was in flight
            return False
        return True

    async def launch_state(self, tenant: str, campaign_id: int) -> LaunchOut:
        camp = await self.campaign(tenant, campaign_id)
        batches = await self._run(self.store.batches, tenant, campaign_id)
        held = await self._run(self.store.batch_recipients, tenant, campaign_id, HELD)
        size = sum(b.size for b in batches)
        accepted = sum(b.accepted or 0 for b in batches)
        done = sum(b.size for b in batches if b.job_id is not None)
        return LaunchOut(campaign=campaign_id, status=camp.status, recipients=size, held=len(held),
                         batches=len(batches), accepted=accepted, rejected=done - accepted)  # fmt: skip

    async def preview(self, tenant: str, campaign_id: int, subscriber_id: int) -> list[PreviewOut]:
        """Each variant's text for one subscriber, measured by the gateway's own rules."""
        camp = await self.campaign(tenant, campaign_id)
        spec, tl, client = parse_spec(camp.definition), self.tenants.get(tenant), self._client(tenant)
        if tl is None:
            raise Conflict(_no_links(tenant), code="no_link_settings", field="short_domain")
        sub = await self._run(self.store.subscriber, tenant, subscriber_id)
        if sub is None:
            raise NotFound(f"no subscriber {subscriber_id}", code="subscriber_not_found", field="subscriber")
        out = []
        for name, source in spec.texts().items():
            text = await self._run(preview_text, self.store, tenant, spec, camp.id, sub, templates.compile_template(source), tl)
            p = await client.preview(text)
            out.append(PreviewOut(subscriber=sub.id, variant=name, text=text, encoding=p.encoding, segments=p.segments,
                                  units=p.units, prices=p.prices))  # fmt: skip
        return out

    async def control(self, tenant: str, campaign_id: int, action: Literal["pause", "resume", "cancel"]) -> CampaignRow:
        """Pause, resume or cancel the campaign and every gateway job it has."""
        await self.campaign(tenant, campaign_id)
        status = {"pause": "paused", "resume": "launched", "cancel": "canceled"}[action]
        camp = await self._run(self.store.set_campaign_status, tenant, campaign_id, status, now=self.clock())
        client = self._client(tenant)
        for b in await self._run(self.store.batches, tenant, campaign_id):
            if b.job_id:
                await client.job_action(b.job_id, action)
        return camp


def preview_text(store: Store, tenant: str, spec: CampaignSpec, cid: int, sub: Subscriber, template: templates.Template,
                 tl: TenantLinks) -> str:  # fmt: skip
    """The text ``sub`` would get, nothing reserved or stored: a pattern's code is the one the send
    mints (keyed); a pool's code is shown as its longest free code would be, by a same-length stand-in."""
    d = spec.discount
    code = None
    if d is not None and d.pattern is not None:
        code = discounts.discount_code(d.pattern, key=tl.key, scope=f"{cid}:{sub.id}")
    elif d is not None:
        code = "X" * 12
    try:
        rendered = templates.render(template, _values(spec, sub, code), rules=spec.rules, locale=sub.language,
                                    first_message=store.last_marketing_at(tenant, [sub.id]).get(sub.id) is None)  # fmt: skip
    except templates.TemplateError as exc:
        raise InvalidInput(f"subscriber {sub.id}: {exc}", code=exc.code, field="template") from exc
    # Any key gives a link of the same length and alphabet as the send's (docs/CAMPAIGNS-SENDING.md).
    return links.shorten(rendered.text, domain=spec.link_domain or tl.domain, key=tl.key, scope=f"{cid}:{sub.id}").text


def held_recipients(rows: Iterable[RecipientRow]) -> list[RecipientRow]:
    return [r for r in rows if r.batch == HELD]


__all__ = ["AbSpec", "AudienceSpec", "CampaignSpec", "DiscountSpec", "GatewayError", "LaunchOut", "Launcher",
           "TenantLinks", "VariantSpec", "freeze", "idempotency_key", "job_body", "parse_spec", "resolve_audience"]


def _no_links(tenant: str) -> str:
    """What to do about ``no_link_settings``: the keys to set (a campaign's short links and discount
    codes are minted with them; docs/CAMPAIGNS.md, "Setting up a shop")."""
    return (f"tenant {tenant!r} has no short-link settings: set short_domain and link_key_env in its "
            "[[campaigns.tenants]] table (docs/CAMPAIGNS.md, \"Setting up a shop\")")
