"""The campaign store seam: one small synchronous interface, two engines (``sqlite``, ``postgres``),
chosen by URL (``campaigns.store.open_store``). Every method is one transaction: nothing is half
stored. The async shell calls it from a worker thread (``anyio.to_thread.run_sync``).

Every implementation passes ``campaigns.store.conformance`` (run on both engines by tests/campaigns)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from campaigns.core.consent import Action, ConsentEntry, Evidence, Source, State
from campaigns.core.events import Profile, ShopEvent
from campaigns.core.flow_inputs import CheckoutEnd
from campaigns.core.imports import ImportRow
from campaigns.core.model import Stats, Subscriber, SubscriberView
from campaigns.core.link_table import LinkTable
from campaigns.store.flow_rows import FlowHead, FlowMessage, FlowRunRow, NodeCount
from campaigns.store.inbox_sql import Change, ConversationApplied, ConversationRow, HistoryItem, InboxFigures, PendingAnswer
from campaigns.store.campaign_rows import (AudienceRow, BatchRow, CampaignRow, CampaignStatus, ClickCounts, ClickIn, HitIn, LinkRange,
                                           LinkRow, Outcomes, PlannedRecipient, RecipientRow, SetTexts, TextKey)  # fmt: skip
from campaigns.store.report_sql import ReportFacts, Scope

if TYPE_CHECKING:
    from campaigns.store.flow_sql import FlowTx

Outcome = Literal["applied", "duplicate", "stale"]


class Applied(msgspec.Struct, frozen=True, kw_only=True):
    """What an event did: ``duplicate`` (its id was seen), ``stale`` (older than the state it would
    change: recorded, nothing changed) or ``applied``. ``changed`` names the tables it changed (the
    segments that depend on them are re-evaluated for ``subscriber_id``)."""

    outcome: Outcome
    subscriber_id: int | None = None
    changed: frozenset[str] = frozenset()
    consent: ConsentEntry | None = None  # a consent box ticked in the event, as recorded
    # other subscribers whose rows the event changed (the order's former owner, the owner of a
    # checkout another phone completed or abandoned): their segments are re-evaluated too
    others: tuple[int, ...] = ()
    # the event ended its checkout for the flows (``flow_inputs.checkout_end``), and the checkout's own
    # subscriber, who hears it (may be another than ``subscriber_id``): ``completed`` the first time it
    # is completed (an order naming it, under any phone; a completed checkout event), ``abandoned``
    # when a checkout event reports it abandoned and it is not completed
    checkout_end: tuple[CheckoutEnd, int] | None = None


class NewConsent(msgspec.Struct, frozen=True, kw_only=True):
    """A consent action to append to the ledger for ``phone`` (canonical E.164)."""

    phone: str
    action: Action
    source: Source
    at: float
    disclosure_text: str | None = None
    disclosure_version: str | None = None
    evidence: Evidence = Evidence()


class MemberPlan(msgspec.Struct, frozen=True, kw_only=True):
    """One segment's membership to refresh for ``ids``: ``where``/``params`` from ``compile_segment(...,
    only=ids)``; ``edges`` from ``compile_edges`` (segments that time alone can change), else None."""

    segment_id: int
    ids: list[int]
    where: str
    params: list[Any]
    edges: tuple[str, list[Any]] | None = None
    # A segment time can change whose edges are all read by another plan's ``shared_edges``
    # (``edges`` None): its timers are still written from what that statement found.
    timed: bool = False
    # ``segment_sql.order_edges``: SQL answering ``(subscriber, at_1, ..., at_k)`` and the segment of
    # each column, the order window edges of several plans over the same ids (carried by one of them)
    shared_edges: tuple[str, list[Any], list[int]] | None = None


class MembersFound(msgspec.Struct, frozen=True, kw_only=True):
    """A membership pass's reads for one group of ``ids`` (``SqlStore.read_members``): segment -> who of
    ``ids`` is in it, segment -> subscriber -> next window edge."""

    ids: list[int]
    inside: dict[int, list[int]]
    edges: dict[int, dict[int, float]]
    # SQLite's pass compares with the stored members in the same statement (``SqlStore._read_group``):
    # then these are the differences, (segment, subscriber) pairs to insert and to delete, and
    # ``inside`` is empty; None: the write compares (PostgreSQL, in its one statement).
    joined: list[tuple[int, int]] | None = None
    left: list[tuple[int, int]] | None = None


class SegmentRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant: str
    name: str
    definition: Any  # the segment tree as JSON (decoded)
    created_at: float
    updated_at: float


class ImportResult(msgspec.Struct, frozen=True, kw_only=True):
    rows: int
    created: int  # new subscribers (the others were updated)
    consented: int  # rows whose proven consent was recorded in the ledger
    unproven: int  # rows claiming consent without proof: imported as not marketable
    skipped_revoked: int  # rows whose number had opted out: an import never re-subscribes


class SyncItem(msgspec.Struct, frozen=True, kw_only=True):
    """A consent change the gateway must hear (``suppress`` / ``unsuppress`` a number)."""

    tenant: str
    phone: str
    action: Literal["suppress", "unsuppress"]
    at: float


class LinkReader(Protocol):
    """Short links by code for the redirect, on a connection of their own (never behind the store's
    writes). ``on_loop``: ``read`` of a few codes never waits on another connection (SQLite in WAL:
    readers do not wait for the writer), so the event loop calls it directly; otherwise the caller
    runs it in a worker thread, many codes per call."""

    on_loop: bool

    def read(self, codes: Sequence[str]) -> dict[str, LinkRow]: ...  # raises StorageError
    def close(self) -> None: ...


class Store(Protocol):
    engine: str

    def close(self) -> None: ...

    # subscribers -----------------------------------------------------------------------------
    def put_subscriber(self, tenant: str, profile: Profile, *, phone: str, at: float, now: float,
                       consent: NewConsent | None = None) -> tuple[Subscriber, bool]: ...  # (row, created?) one tx
    def subscriber(self, tenant: str, subscriber_id: int) -> Subscriber | None: ...
    def subscriber_by_phone(self, tenant: str, phone: str) -> Subscriber | None: ...
    def subscribers(self, tenant: str, *, after: int, limit: int) -> list[Subscriber]: ...
    def subscribers_by_ids(self, tenant: str, ids: Sequence[int]) -> list[Subscriber]: ...
    def tags(self, tenant: str, subscriber_id: int) -> frozenset[str]: ...
    def set_tags(self, tenant: str, subscriber_id: int, *, add: Sequence[str] = (), remove: Sequence[str] = ()) -> frozenset[str]: ...  # noqa: E501

    # consent ---------------------------------------------------------------------------------
    def record_consent(self, tenant: str, entry: NewConsent, *, now: float,
                       event_id: str | None = None) -> tuple[ConsentEntry | None, State]: ...  # None: event_id seen
    def ledger(self, tenant: str, subscriber_id: int) -> list[ConsentEntry]: ...
    def import_rows(self, tenant: str, rows: Sequence[ImportRow], *, now: float) -> ImportResult: ...  # one tx

    # shop events -----------------------------------------------------------------------------
    def apply_event(self, tenant: str, event: ShopEvent, *, phone: str | None, now: float) -> Applied: ...
    def apply_events(self, tenant: str, events: Sequence[tuple[ShopEvent, str | None]], *, now: float) -> list[Applied]: ...  # one tx
    def known_phones(self, tenant: str, phones: Sequence[str]) -> set[str]: ...  # those a subscriber has
    def first_order_currency(self, tenant: str) -> str | None: ...  # the currency of the earliest order stored
    def claim_currency(self, tenant: str, currency: str | None) -> str | None: ...  # the shop's, first claim wins
    def abandon_checkouts(self, tenant: str, *, after_s: float, now: float) -> list[int]: ...
    def refresh_scores(self, tenant: str, *, now: float) -> int: ...
    def stats(self, tenant: str, subscriber_id: int) -> Stats: ...
    def view(self, tenant: str, subscriber_id: int) -> SubscriberView | None: ...

    # segments (the SQL comes from campaigns.store.segment_sql for this store's ``engine``) -------
    def count_where(self, tenant: str, where: str, params: Sequence[Any]) -> int: ...
    def ids_where(self, tenant: str, where: str, params: Sequence[Any], *, after: int, limit: int) -> list[int]: ...
    def put_segment(self, tenant: str, name: str, definition: Any, *, now: float, segment_id: int | None = None) -> SegmentRow: ...  # noqa: E501
    def segment(self, tenant: str, segment_id: int) -> SegmentRow | None: ...
    def segments(self, tenant: str, *, after: int = 0, limit: int = 100) -> list[SegmentRow]: ...
    def delete_segment(self, tenant: str, segment_id: int) -> bool: ...
    def set_member(self, tenant: str, segment_id: int, subscriber_id: int, member: bool, *, now: float) -> bool: ...
    def members(self, tenant: str, segment_id: int, *, after: int, limit: int) -> list[int]: ...
    def rebuild_members(self, tenant: str, segment_id: int, where: str, params: Sequence[Any], *, now: float) -> int: ...
    def refresh_members(self, tenant: str, plans: Sequence[MemberPlan], *, now: float) -> int: ...  # one tx; changes made
    def member_segments(self, tenant: str, subscriber_id: int) -> list[tuple[int, float]]: ...
    def set_timer(self, tenant: str, segment_id: int, subscriber_id: int, at: float | None) -> None: ...
    def due_timers(self, now: float, limit: int = 1000) -> list[tuple[str, int, int]]: ...  # taken when read

    # the gateway link ------------------------------------------------------------------------
    def sync_pending(self, tenant: str | None = None, limit: int = 500) -> list[SyncItem]: ...
    def sync_done(self, item: SyncItem) -> None: ...
    def cursor(self, tenant: str, name: str) -> int: ...  # e.g. the last gateway inbound id read
    def set_cursor(self, tenant: str, name: str, value: int) -> None: ...

    # campaigns (issue 18: campaigns/store/campaign_sql.py) ---------------------------------------
    def put_campaign(self, tenant: str, name: str, definition: Any, *, now: float) -> CampaignRow: ...
    def campaign(self, tenant: str, campaign_id: int) -> CampaignRow | None: ...
    def campaign_status(self, tenant: str, campaign_id: int) -> CampaignStatus | None: ...  # never behind a writer (SQLite)
    def set_campaign_status(self, tenant: str, campaign_id: int, status: CampaignStatus, *, now: float) -> CampaignRow: ...
    def freeze_audience(self, tenant: str, campaign_id: int, recipients: Sequence[PlannedRecipient],
                        links: Sequence[LinkRow], *, now: float,
                        link_range: LinkRange | None = None) -> bool: ...  # False: already frozen
    def freeze_set(self, tenant: str, campaign_id: int, include: Sequence[int], exclude: Sequence[int],
                   ids: Sequence[int], *, batch_size: int, smart_window_s: float, reads_name: bool,
                   zones: Callable[[list[str | None]], Mapping[str | None, tuple[str, float | None]]],
                   texts: Callable[[list[TextKey], Callable[[Sequence[TextKey]], tuple[TextKey, int]]], SetTexts],
                   now: float, expires_at: float | None = None,
                   chunk: int | None = None) -> bool: ...  # freeze_audience, planned in SQL (chunk: batches written now)
    def freeze_next(self, tenant: str, campaign_id: int, *, batches: int, batch_size: int,
                    codes: Callable[[int, int], bytes] | None) -> int | None: ...  # the next chunk; first batch still planned
    def plan_pending(self, tenant: str, campaign_id: int, batch_size: int) -> int | None: ...  # first batch still planned
    def freeze_stream(self, tenant: str, campaign_id: int, include: Sequence[int], exclude: Sequence[int],
                      ids: Sequence[int], *, batch_size: int, chunk: int, smart_window_s: float, reads_name: bool,
                      send_at: float, zones: Callable[[list[str | None]], Mapping[str | None, tuple[str, float | None]]],
                      texts: Callable[[list[TextKey], Callable[[Sequence[TextKey]], tuple[TextKey, int]]], SetTexts],
                      now: float, expires_at: float | None = None,
                      lines: dict[int, list[tuple[str, str, str]]] | None = None,
                      start: tuple[int, int] | None = None,
                      begun: Callable[[int, int, bool], None] | None = None) -> int | None: ...  # the next chunk of a stream
    def stream_pending(self, tenant: str, campaign_id: int, batch_size: int) -> int | None: ...  # first batch to stream
    def url_like_names(self, tenant: str) -> bool: ...  # a subscriber's first name holds a URL
    def launch_audience(self, tenant: str, include: Sequence[int], exclude: Sequence[int],
                        ids: Sequence[int]) -> tuple[list[AudienceRow], dict[int, float | None]]: ...
    def link_range_end(self, tenant: str, length: int) -> int: ...  # a new link range's first number
    def link_range(self, tenant: str, campaign_id: int) -> LinkRange | None: ...
    def batches(self, tenant: str, campaign_id: int) -> list[BatchRow]: ...
    def batch_recipients(self, tenant: str, campaign_id: int, batch: int) -> list[RecipientRow]: ...
    def batch_lines(self, tenant: str, campaign_id: int, batch: int) -> list[tuple[str, str, str]]: ...  # (phone, text, tz)
    def campaign_recipients(self, tenant: str, campaign_id: int, *, after: int = 0, limit: int = 1000) -> list[RecipientRow]: ...
    def batch_submitted(self, tenant: str, campaign_id: int, batch: int, *, job_id: str, accepted: int,
                        rejected: Sequence[int], now: float) -> None: ...
    def recipient_state(self, tenant: str, job_id: str, idx: int, *, state: str, message_id: str | None,
                        at: float) -> RecipientRow | None: ...
    def set_link_keys(self, keys: Mapping[str, bytes]) -> None: ...  # tenant -> link key (range codes)
    def links(self, codes: Sequence[str]) -> dict[str, LinkRow]: ...  # campaign_sql.resolve_codes
    def link(self, code: str) -> LinkRow | None: ...
    def link_nowait(self, code: str) -> tuple[bool, LinkRow | None]: ...  # (False, None): use link() in a thread
    def open_link_reader(self) -> LinkReader: ...  # the redirect's misses, off the store's shared connection
    def link_table(self) -> LinkTable: ...  # every range, its written slots, the shadowed codes (the redirect's table)
    @property
    def link_table_version(self) -> int: ...  # bumped by this object's changes to what link_table reads
    def slot_recipients(self, slots: Sequence[tuple[str, int, int, int]]) -> dict[tuple[str, int, int, int], tuple[int, str, float | None]]: ...
    def link_exists(self, code: str) -> bool: ...
    def existing_links(self, codes: Sequence[str]) -> set[str]: ...
    def record_click(self, code: str, *, at: float, user_agent: str, verdict: str) -> bool: ...  # True: unique
    def click_counts(self, tenant: str, campaign_id: int) -> ClickCounts: ...
    def human_clicks(self, tenant: str, campaign_id: int) -> list[tuple[int, float]]: ...
    def add_discount_codes(self, tenant: str, pool: str, codes: Sequence[str]) -> int: ...
    def discount_code_taken(self, tenant: str, code: str) -> bool: ...
    def reserve_discount(self, tenant: str, pool: str, campaign_id: int, subscriber_id: int, *, now: float) -> str | None: ...
    def record_pattern_code(self, tenant: str, pool: str, code: str, campaign_id: int, subscriber_id: int, *,
                            now: float) -> None: ...
    def last_marketing_at(self, tenant: str, subscriber_ids: Sequence[int]) -> dict[int, float | None]: ...
    def audience_rows(self, tenant: str, subscriber_ids: Sequence[int]) -> list[AudienceRow]: ...  # confirmed, by id
    def campaign_outcomes(self, tenant: str, campaign_id: int, *, since: float) -> Outcomes: ...
    # The report (campaigns/store/report_sql.py): counts in SQL, histories of who ordered or opted out.
    def report_facts(self, tenant: str, scope: Scope) -> ReportFacts: ...
    def record_flow_message(self, tenant: str, *, id: str, flow_id: str, step: str, subscriber_id: int, sent_at: float,
                            message_id: str | None = None, discount_code: str | None = None,
                            link_codes: Sequence[str] = ()) -> bool: ...  # fmt: skip
    def flow_message_state(self, tenant: str, id: str, *, state: str, at: float, message_id: str | None = None) -> None: ...
    def record_cost(self, tenant: str, message_id: str, *, carrier: str | None, segments: int, cost: int | None,
                    recipient: tuple[int, int] | None = None) -> None: ...
    def record_clicks(self, clicks: Sequence[ClickIn]) -> int: ...
    def record_hits(self, clicks: Sequence[ClickIn], activities: Mapping[str, Sequence[tuple[ShopEvent, str | None]]],
                    *, now: float) -> int: ...  # the redirect's buffer: hits + clicked activities, one transaction
    def record_link_hits(self, hits: Sequence[HitIn], *, now: float) -> int: ...  # the same, derived from the hits' links
    def release_held(self, tenant: str, campaign_id: int, recipients: Sequence[PlannedRecipient],
                     links: Sequence[LinkRow]) -> int: ...

    # flows (issue 19: campaigns/store/flow_sql.py) -------------------------------------------------
    def flow_tx(self, tenant: str) -> AbstractContextManager[FlowTx]: ...  # one transaction of the runtime
    def flow_plan_supported(self) -> bool: ...  # SQLite on a file: batches decided in a read snapshot
    def flow_plan(self, tenant: str, *, part: int = 0, parts: int = 1) -> AbstractContextManager[FlowTx]: ...
    def put_flow_version(self, tenant: str, flow_id: str, name: str, definition: Any, *, now: float, new: bool) -> FlowHead: ...
    def flow_head(self, tenant: str, flow_id: str) -> FlowHead | None: ...
    def flow_heads(self, tenant: str) -> list[FlowHead]: ...
    def flow_version(self, tenant: str, flow_id: str, version: int) -> Any: ...
    def set_flow_enabled(self, tenant: str, flow_id: str, enabled: bool, *, now: float) -> FlowHead: ...
    def put_flow_template(self, tenant: str, template_id: str, text: str, *, now: float) -> None: ...
    def flow_templates(self, tenant: str) -> dict[str, str]: ...
    def flow_run_rows(self, tenant: str, *, flow_id: str | None = None, subscriber_id: int | None = None,
                      after: int = 0, limit: int = 100) -> list[FlowRunRow]: ...
    def flow_node_counts(self, tenant: str, flow_id: str) -> list[NodeCount]: ...
    def pending_flow_messages(self, limit: int = 500, *, tenant: str | None = None, part: int = 0,
                              parts: int = 1, kind: Literal["sends", "webhooks"] | None = None,
                              now: float | None = None) -> list[FlowMessage]: ...
    def flow_messages_later(self, later: Sequence[tuple[str, str, float, str | None]]) -> None: ...
    def flow_messages_done(self, done: Sequence[tuple[str, str, str, str | None, str | None]], *, now: float) -> None: ...
    def flow_messages(self, tenant: str, *, flow_id: str | None = None, subscriber_id: int | None = None,
                      limit: int = 1000) -> list[FlowMessage]: ...
    def next_flow_due(self) -> float | None: ...
    # the inbox (issue 19: campaigns/store/inbox_sql.py) ------------------------------------------
    def conversation_apply(self, tenant: str, key: int | str, change: Change, *, now: float,
                           message_id: str | None = None, route: Any = None, our_number: str | None = None,
                           answer_request: bytes | None = None) -> ConversationApplied: ...  # fmt: skip
    def conversations_record(self, tenant: str, changes: Sequence[tuple[str, Change, str]], *, now: float) -> int: ...
    def answer_state(self, tenant: str, message_id: str, *, state: str, at: float, gateway_id: str | None = None,
                     error: str | None = None) -> bool: ...  # fmt: skip
    def answer_state_by_gateway_id(self, tenant: str, gateway_id: str, *, state: str, at: float) -> bool: ...
    def conversation(self, tenant: str, conversation_id: int) -> ConversationRow | None: ...
    def conversation_message(self, tenant: str, message_id: str) -> HistoryItem | None: ...
    def conversation_by_phone(self, tenant: str, phone: str) -> ConversationRow | None: ...
    def conversations(self, tenant: str, *, status: Any = None, assignee: str | None = None,
                      after: tuple[float, int] | int = 0, limit: int = 100) -> list[ConversationRow]: ...  # fmt: skip
    def conversation_history(self, tenant: str, conversation_id: int, *, after: tuple[float, int, int] | None = None,
                             limit: int = 100) -> list[tuple[tuple[float, int, int], HistoryItem]]: ...  # fmt: skip
    def answers_unsettled(self, tenant: str, *, limit: int = 100) -> list[PendingAnswer]: ...
    def answer_pending(self, tenant: str, message_id: str) -> PendingAnswer | None: ...
    def inbox_figures(self, tenant: str, *, since: float) -> InboxFigures: ...
