"""What comes in: subscriber profiles and shop events, as typed, validated msgspec Structs.

Every decoder error names the field (``InvalidInput.field``, e.g. ``items[1].price``) and carries a
stable ``code``. Phone numbers are made canonical E.164 here (phonenumbers; ``invalid_phone``).

Shop events are a tagged union on ``type``: ``customer``, ``order``, ``checkout``, ``fulfillment``,
``activity`` (clicked / replied / message_sent / delivered) and ``custom``. Each carries an ``id``
(idempotency: the same id is applied once) and ``at`` (when it happened at the shop: an older event
never overwrites newer state)."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

import msgspec
import phonenumbers

from campaigns.core.consent import Evidence
from campaigns.errors import InvalidInput, nul_path, schema_field

Money = Annotated[int, msgspec.Meta(ge=0, le=10**13)]
Instant = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=2000)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Date = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class Profile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A subscriber's profile as the API takes it; ``None`` leaves a stored field as it is."""

    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    first_name: Name | None = None
    last_name: Name | None = None
    email: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)] | None = None
    gender: Literal["female", "male", "other"] | None = None
    birthday: Date | None = None
    country: Country | None = None
    region: Name | None = None
    city: Name | None = None
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    language: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] | None = None
    signup_source: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] | None = None
    tags: tuple[Tag, ...] = ()
    attributes: dict[str, Any] | None = None


class ConsentGrant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A consent box ticked at checkout or on a form: the text shown is the disclosure."""

    accepted: bool
    disclosure_text: Text | None = None
    disclosure_version: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    evidence: Evidence = Evidence()


class _Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    id: EventId
    at: Instant


class CustomerEvent(_Event, tag="customer"):
    profile: Profile
    consent: ConsentGrant | None = None


class Item(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product: Name
    category: Name | None = None
    price: Money = 0
    quantity: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1


class OrderEvent(_Event, tag="order"):
    order_id: EventId
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    total: Money
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
    payment_status: Literal["paid", "pending", "refunded"]
    fulfillment_status: Annotated[str, msgspec.Meta(max_length=50)] | None = None
    discount_code: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    created_at: Instant | None = None  # when the order was placed; default: ``at``
    items: tuple[Item, ...] = ()
    checkout_id: EventId | None = None  # completes (recovers) that checkout


class CheckoutEvent(_Event, tag="checkout"):
    checkout_id: EventId
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    status: Literal["started", "completed", "abandoned"] = "started"
    url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    value: Money = 0
    consent: ConsentGrant | None = None  # the checkout's SMS opt-in box


class FulfillmentEvent(_Event, tag="fulfillment"):
    order_id: EventId
    status: Literal["shipped", "delivered", "canceled"]
    tracking_url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class ActivityEvent(_Event, tag="activity"):
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    kind: Literal["clicked", "replied", "message_sent", "delivered"]
    properties: dict[str, Any] = {}


class CustomEvent(_Event, tag="custom"):
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]
    properties: dict[str, Any] = {}


ShopEvent = CustomerEvent | OrderEvent | CheckoutEvent | FulfillmentEvent | ActivityEvent | CustomEvent
#: Activity kinds that are the layer's own words; a custom event may not take them.
RESERVED_KINDS = frozenset({"clicked", "replied", "message_sent", "delivered"})

_event_decoder = msgspec.json.Decoder(ShopEvent)
_NUL_ESCAPE, _NUL_ESCAPE_B = "\\u0000", b"\\u0000"
_profile_decoder = msgspec.json.Decoder(Profile)
_AT = re.compile(r" - at `\$(.*)`$")


def _field(exc: msgspec.ValidationError) -> str | None:
    return schema_field(str(exc))[1]  # a missing or unknown field named too (``order_id``, ``items[0].price``)


def _invalid(exc: msgspec.ValidationError, prefix: str = "") -> InvalidInput:
    field = _field(exc)
    if field is not None and prefix:
        field = f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"
    elif field is None and prefix:
        field = prefix
    message = _AT.sub("", str(exc))
    return InvalidInput(f"{message} (at {field})" if field else message, code="invalid_field", field=field)


def decode_event(data: bytes | str) -> ShopEvent:
    """One JSON shop event -> its typed form, or InvalidInput naming the field."""
    try:
        event = _event_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"not JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InvalidInput("not JSON: nested too deeply", code="invalid_json") from None
    # A NUL can only come as the escape \u0000 (JSON has no raw control characters): the decoded event
    # is walked only then, not on every event (the walk costs ~7 µs an event, the decode ~1.3).
    if (_NUL_ESCAPE_B in data) if isinstance(data, bytes) else (_NUL_ESCAPE in data):
        hit = nul_path(event)
        if hit is not None:  # PostgreSQL cannot store one in text and SQLite would: refused alike
            raise InvalidInput(f"NUL character (U+0000) in {hit}", code="invalid_field", field=hit)
    if isinstance(event, CustomEvent) and event.name in RESERVED_KINDS:
        raise InvalidInput(f"custom event name {event.name!r} is reserved: use type 'activity'",
                           code="reserved_name", field="name")  # fmt: skip
    return event


def convert_event(obj: Any) -> ShopEvent:
    """Like ``decode_event`` for an already-parsed object."""
    return decode_event(msgspec.json.encode(obj))


def decode_profile(data: bytes | str) -> Profile:
    try:
        profile = _profile_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"not JSON: {exc}", code="invalid_json") from None
    if (hit := nul_path(profile)) is not None:
        raise InvalidInput(f"NUL character (U+0000) in {hit}", code="invalid_field", field=hit)
    return profile


@functools.lru_cache(maxsize=1 << 16)
def _canonical(raw: str, region: str | None) -> str | None:
    # phonenumbers' parse + is_valid_number costs ~0.1 ms: the busiest numbers are remembered.
    try:
        number = phonenumbers.parse(raw, region if not raw.strip().startswith("+") else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def looks_canonical(raw: str) -> bool:
    """Whether ``raw`` has the shape of a canonical E.164 number (``+`` and digits only): one the store
    already holds for a subscriber was canonicalised when stored, and needs no second check."""
    return _E164.fullmatch(raw) is not None


def canonical_phone(raw: str, *, region: str | None = None, field: str = "phone") -> str:
    """``raw`` as canonical E.164 (``+33612345678``), or InvalidInput(code="invalid_phone", field).

    A number without ``+`` is read in ``region`` (ISO alpha-2; e.g. the subscriber's country)."""
    canonical = _canonical(raw, region if not raw.strip().startswith("+") else None)
    if canonical is None:
        raise InvalidInput(f"{field}: {raw!r} is not a valid phone number"
                           + ("" if raw.strip().startswith("+") or region else " (use E.164: +CC...)"),
                           code="invalid_phone", field=field)  # fmt: skip
    return canonical


# Number types that receive no text message, or whose texts cost the sender a premium (the tool of SMS
# pumping: a bot signs premium numbers up on a public form): phonenumbers' metadata per country.
_NO_SMS = {phonenumbers.PhoneNumberType.FIXED_LINE: "a landline", phonenumbers.PhoneNumberType.TOLL_FREE: "a toll-free number",
           phonenumbers.PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
           phonenumbers.PhoneNumberType.SHARED_COST: "a shared-cost number", phonenumbers.PhoneNumberType.UAN: "a company number",
           phonenumbers.PhoneNumberType.VOICEMAIL: "a voicemail number"}  # fmt: skip


def check_textable(e164: str, *, field: str = "phone") -> str:
    """``e164`` (canonical) if it may receive a text message; an InvalidInput ``not_mobile`` naming
    ``field`` if phonenumbers knows it as a landline, toll-free, premium-rate, shared-cost, company
    (UAN) or voicemail number. Mobile, "fixed line or mobile" (the US, Canada, China ...), VoIP,
    personal and pager numbers, and numbers of an unknown type, pass."""
    kind = _NO_SMS.get(phonenumbers.number_type(phonenumbers.parse(e164)))
    if kind is not None:
        raise InvalidInput(f"{field}: {e164} is {kind}, not a mobile number: sign-ups take numbers that receive texts",
                           code="not_mobile", field=field)  # fmt: skip
    return e164


def event_phone(event: ShopEvent) -> str | None:
    """The phone an event names (a fulfilment names an order instead)."""
    if isinstance(event, CustomerEvent):
        return event.profile.phone
    if isinstance(event, FulfillmentEvent):
        return None
    return event.phone
