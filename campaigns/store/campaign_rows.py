"""The rows of the campaign tables (issue 18), shared by the store seam and the service."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

CampaignStatus = Literal["draft", "launching", "launched", "paused", "canceled"]

#: A recipient ``r`` whose batch the gateway accepted (its job id is stored): its ``submitted``,
#: which is not written per recipient (a launch stores one job id per batch, not a state per row).
ACCEPTED = ("EXISTS (SELECT 1 FROM campaign_batches b WHERE b.tenant = r.tenant AND b.campaign_id = r.campaign_id "
            "AND b.batch = r.batch AND b.job_id <> '')")
#: A recipient ``r`` as its readers see its state: ``planned`` in an accepted batch reads ``submitted``.
STATE = f"CASE WHEN r.state = 'planned' AND {ACCEPTED} THEN 'submitted' ELSE r.state END"
#: A recipient ``r`` that was sent: a state past ``planned`` (reported by the gateway), or ``planned``
#: in an accepted batch; not held, rejected or canceled.
SENT = f"r.batch <> -1 AND r.state NOT IN ('rejected', 'canceled') AND (r.state <> 'planned' OR {ACCEPTED})"


class CampaignRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant: str
    name: str
    definition: Any  # the campaign definition as JSON (decoded): audience, template(s), schedule, A/B
    status: CampaignStatus
    created_at: float
    updated_at: float
    launched_at: float | None = None


class AudienceRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a launch reads of a marketable subscriber (``Store.audience_rows``): only what its send
    and its text need, the attributes as stored (JSON text, decoded only when a text reads one)."""

    id: int
    phone: str
    first_name: str | None
    time_zone: str | None
    language: str | None
    attributes: str | None


class PlannedRecipient(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient of a launch, frozen: what the gateway will be sent, in which batch and slot."""

    subscriber_id: int
    phone: str
    variant: str | None
    send_at: float
    tz: str
    text: str
    batch: int
    idx: int  # the recipient's line in the batch's NDJSON job (the gateway's ``index``)


class RecipientRow(msgspec.Struct, frozen=True, kw_only=True):
    campaign_id: int
    subscriber_id: int
    phone: str
    variant: str | None
    send_at: float
    tz: str
    text: str
    batch: int
    idx: int
    message_id: str | None
    state: str
    state_at: float | None


class BatchRow(msgspec.Struct, frozen=True, kw_only=True):
    campaign_id: int
    batch: int
    send_at: float
    size: int
    job_id: str | None
    accepted: int | None


class LinkRow(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    tenant: str
    campaign_id: int
    subscriber_id: int
    target: str
    created_at: float
    expires_at: float | None = None
    # Read with the link (not stored in short_links): the recipient's number and delivery time.
    phone: str | None = None
    delivered_at: float | None = None


class LinkRange(msgspec.Struct, frozen=True, kw_only=True):
    """A launch's short-link numbers (docs/ARCHITECTURE.md, "Campaign short links without a row per
    recipient"): the recipient in batch ``b``, slot ``i`` has URL ``p`` at link number
    ``start + (b * batch_size + i) * stride + p``, its code ``links.LinkCipher(key, length)``'s."""

    tenant: str
    campaign_id: int
    length: int
    start: int
    count: int
    stride: int  # URLs per recipient
    batch_size: int
    targets: tuple[str, ...]  # the URLs, in text order
    created_at: float
    expires_at: float | None = None
    holes: tuple[int, ...] | None = ()  # slots whose recipient has other codes (None: not recorded)

    def number(self, batch: int, idx: int, position: int) -> int:
        return self.start + (batch * self.batch_size + idx) * self.stride + position


class ClickCounts(msgspec.Struct, frozen=True, kw_only=True):
    unique: int  # codes with at least one human click
    total: int  # human clicks
    ignored: int  # bots, HEAD, too soon after delivery


class Outcomes(msgspec.Struct, frozen=True, kw_only=True):
    """What the campaign's recipients did since it was sent (for attribution)."""

    orders: list[tuple[str, int, float, int, str | None]]  # (order id, subscriber, at, total, discount code)
    opt_outs: list[tuple[int, float]]  # (subscriber, at)


class ClickIn(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """One hit on a short link, as the redirect saw it (buffered, then written in a batch)."""

    code: str
    at: float
    user_agent: str
    verdict: str


class HitIn(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """One hit with the link it resolved to, as the redirect knows it (``record_link_hits``): what the
    click's ``short_links`` row, its ``clicked`` activity and the aggregates are derived from, with
    no read (``phone`` None: a link without a campaign recipient, e.g. a flow's: no activity)."""

    code: str
    at: float
    user_agent: str
    verdict: str
    tenant: str
    campaign_id: int
    subscriber_id: int
    phone: str | None
    target: str
    created_at: float
    expires_at: float | None


class TextKey(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One distinct text of a set-based launch (``Store.freeze_set``): the recipients who share what
    their text is made of (the first name where the template reads it, the language, and whether it
    is their first marketing message) share one rendering."""

    key: str  # as the store's SQL builds it (opaque to the caller)
    first_name: str | None
    language: str | None
    first: bool


class SetTexts(msgspec.Struct, frozen=True, kw_only=True):
    """What a set-based freeze writes into each recipient's text: per key, the pieces between its
    short links (each piece before a link ends with ``https://{domain}/``), the URLs the links
    stand for (the same for every key), and the codes of link numbers (``codes(start, count)``: the
    ASCII bytes of ``count`` codes of ``length`` characters, in number order)."""

    pieces: dict[str, tuple[str, ...]]
    targets: tuple[str, ...]
    length: int
    codes: Any  # Callable[[int, int], bytes]
