"""The segment language: a typed JSON tree, validated, evaluable in Python for one subscriber.

Pure: no I/O, no clock; every time window is measured from the ``now`` the caller passes. The same
tree compiles to SQL for SQLite and PostgreSQL (``campaigns/store/segment_sql.py``); a hypothesis
test loads random data into both engines and checks that SQL and ``evaluate`` agree.

Grammar (user-facing JSON; docs/CAMPAIGNS.md "Segments" has examples)::

    node      := {"all": [node, ...]}            every child holds (an empty list: everyone)
               | {"any": [node, ...]}            at least one child holds (empty: no one)
               | {"not": node}
               | {"field": NAME, "op": OP, "value": V}      profile fields and aggregates
               | {"attribute": KEY, "op": OP, "value": V}   custom attributes (JSON object)
               | {"tag": TAG}
               | {"rfm": TIER}                               champions, loyal, ...
               | {"event": "order"|"item"|"checkout"|"activity",
                  "kind": ..., "state": ..., "within_days": D, "where": {...},
                  "measure": "count"|"sum"|"quantity", "op": OP, "value": N}

Semantics are two-valued: a condition on a missing value is false (``eq``, ``gt``, ``contains``,
...), and its negation (``ne``, ``not_in``, ``not_contains``, ``not_exists``) is exactly ``not``
of it, so ``{"field": "gender", "op": "ne", "value": "female"}`` holds for a subscriber without a
gender. A missing aggregates row reads as ``Stats()`` (0 orders, 0 spent). Numbers are compared as
IEEE doubles (values are limited to +-2**53, where that is exact for integers); text by code point.

Errors: ``SegmentError`` (an ``InvalidInput``) with a stable ``code`` and the ``path`` of the
offending node (``$.all[2].any[0].value``)::

    SegmentError.code: segment.json | segment.type | segment.shape | segment.unknown_key |
                       segment.missing_key | segment.unknown_field | segment.bad_op |
                       segment.bad_value | segment.too_deep | segment.too_large
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal, NamedTuple, Union

import msgspec

from campaigns.core.model import Stats, Subscriber, SubscriberView
from campaigns.errors import InvalidInput

__all__ = [
    "DAY",
    "MAX_DEPTH",
    "MAX_LIST",
    "MAX_NODES",
    "RFM_TIERS",
    "AllOf",
    "AnyOf",
    "affected_by",
    "affected_each",
    "new_order_changes",
    "walk",
    "Attribute",
    "Event",
    "Field",
    "Not",
    "RfmTier",
    "Segment",
    "SegmentError",
    "Tag",
    "birthday_keys",
    "dependencies",
    "dump_segment",
    "evaluate",
    "expand_rfm",
    "next_change",
    "parse_segment",
]

DAY = 86_400.0
MAX_DEPTH = 12  # nesting of all/any/not
MAX_NODES = 256  # nodes in one tree
MAX_LIST = 1000  # values of one `in` list
MAX_TEXT = 256  # characters of one string value
MAX_NUMBER = 2.0**53  # |number|: integers stay exact as doubles
MAX_DAYS = 36_500.0
MAX_BIRTHDAY_DAYS = 366


class SegmentError(InvalidInput):
    """A segment definition is invalid; ``path`` names the node (``$.all[2].value``)."""

    def __init__(self, code: str, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}", code=code, field=path)
        self.path = path
        self.reason = message


# ---- the tree -------------------------------------------------------------------------------


class AllOf(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[Segment, ...]


class AnyOf(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[Segment, ...]


class Not(msgspec.Struct, frozen=True, kw_only=True):
    item: Segment


class Field(msgspec.Struct, frozen=True, kw_only=True):
    """A profile field (``subscribers``) or an aggregate (``subscriber_stats``)."""

    field: str
    op: str
    value: Any = None


class Attribute(msgspec.Struct, frozen=True, kw_only=True):
    """A key of the subscriber's custom attributes (a JSON object)."""

    name: str
    op: str
    value: Any = None


class Tag(msgspec.Struct, frozen=True, kw_only=True):
    tag: str


class RfmTier(msgspec.Struct, frozen=True, kw_only=True):
    tier: str


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Rows of one event table, optionally in a window and filtered, counted or summed, compared."""

    source: Literal["order", "item", "checkout", "activity"]
    kind: str | None = None  # activity kind (clicked, replied, message_sent, delivered, custom)
    state: Literal["started", "abandoned", "completed"] | None = None  # checkouts
    within_days: float | None = None  # rows at or after now - within_days (None: all time)
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (column, allowed values), ANDed
    measure: Literal["count", "sum", "quantity"] = "count"
    op: str = "gte"
    value: float = 1


Segment = Union[AllOf, AnyOf, Not, Field, Attribute, Tag, RfmTier, Event]  # noqa: UP007 (forward refs)


# ---- the catalogue of fields ----------------------------------------------------------------

Kind = Literal["text", "enum", "country", "date", "time", "number"]


class FieldSpec(NamedTuple):
    table: Literal["subscribers", "subscriber_stats"]
    kind: Kind
    choices: frozenset[str] = frozenset()


_GENDERS = frozenset({"female", "male", "other"})
_CONSENT = frozenset({"none", "pending", "confirmed", "revoked"})
_PAYMENT = frozenset({"paid", "pending", "refunded"})

FIELDS: dict[str, FieldSpec] = {
    **{name: FieldSpec("subscribers", "text") for name in (
        "phone", "first_name", "last_name", "email", "region", "city", "time_zone", "language",
        "signup_source")},  # fmt: skip
    "gender": FieldSpec("subscribers", "enum", _GENDERS),
    "consent": FieldSpec("subscribers", "enum", _CONSENT),
    "country": FieldSpec("subscribers", "country"),
    "birthday": FieldSpec("subscribers", "date"),
    "created_at": FieldSpec("subscribers", "time"),
    "consent_at": FieldSpec("subscribers", "time"),
    **{name: FieldSpec("subscriber_stats", "number") for name in (
        "orders_count", "total_spent", "avg_order_value", "rfm_r", "rfm_f", "rfm_m", "engagement")},  # fmt: skip
    **{name: FieldSpec("subscriber_stats", "time") for name in (
        "first_order_at", "last_order_at", "last_abandoned_checkout_at", "last_click_at", "last_message_at",
        "last_reply_at")},  # fmt: skip
    "last_order_payment_status": FieldSpec("subscriber_stats", "enum", _PAYMENT),
}


def _defaults(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: (None if f.default is msgspec.NODEFAULT else f.default) for f in msgspec.structs.fields(struct)}


# What a missing value reads as (a subscriber without an aggregates row has Stats()): SQL uses the
# same table, so both sides agree on "no orders yet".
FIELD_DEFAULTS: dict[str, Any] = {**_defaults(Subscriber), **_defaults(Stats)}

# Positive operators per kind; each negative operator is exactly `not` of its positive.
NEGATED = {"ne": "eq", "not_in": "in", "not_contains": "contains", "not_exists": "exists"}
_OPS: dict[str, frozenset[str]] = {
    "text": frozenset({"eq", "in", "contains", "exists"}),
    "enum": frozenset({"eq", "in", "exists"}),
    "country": frozenset({"eq", "in", "exists"}),
    "date": frozenset({"eq", "in", "exists", "gt", "gte", "lt", "lte", "in_next_days"}),
    "time": frozenset({"exists", "gt", "gte", "lt", "lte", "within_days", "before_days"}),
    "number": frozenset({"eq", "in", "exists", "gt", "gte", "lt", "lte"}),
}
ATTRIBUTE_OPS = frozenset({"eq", "in", "contains", "exists", "gt", "gte", "lt", "lte"})
AGGREGATE_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")

_EVENT_WHERE = {
    "order": {"payment_status": _PAYMENT, "fulfillment_status": None, "currency": None, "discount_code": None},
    "item": {"product": None, "category": None, "payment_status": _PAYMENT, "fulfillment_status": None,
             "currency": None, "discount_code": None},  # fmt: skip
    "checkout": {},
    "activity": {},
}
_EVENT_MEASURES = {"order": ("count", "sum"), "item": ("count", "sum", "quantity"), "checkout": ("count", "sum"),
                   "activity": ("count",)}  # fmt: skip
CHECKOUT_STATES = ("started", "abandoned", "completed")

# Named RFM tiers (seed 004): each is an AND of score bounds on rfm_r / rfm_f / rfm_m (1..5).
RFM_TIERS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "champions": (("rfm_r", "gte", 4), ("rfm_f", "gte", 4), ("rfm_m", "gte", 4)),
    "loyal": (("rfm_r", "gte", 3), ("rfm_f", "gte", 4)),
    "potential_loyalists": (("rfm_r", "gte", 4), ("rfm_f", "gte", 2), ("rfm_f", "lte", 3)),
    "new": (("rfm_r", "gte", 4), ("rfm_f", "lte", 1)),
    "at_risk": (("rfm_r", "lte", 2), ("rfm_f", "gte", 3)),
    "cant_lose": (("rfm_r", "lte", 1), ("rfm_f", "gte", 4), ("rfm_m", "gte", 4)),
    "hibernating": (("rfm_r", "lte", 2), ("rfm_f", "lte", 2)),
}

_ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def expand_rfm(tier: str) -> AllOf:
    return AllOf(items=tuple(Field(field=f, op=op, value=v) for f, op, v in RFM_TIERS[tier]))


# ---- parsing --------------------------------------------------------------------------------


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0

    def node(self, obj: Any, path: str, depth: int) -> Segment:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SegmentError("segment.too_large", path, f"a segment has at most {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise SegmentError("segment.too_deep", path, f"all/any/not nest at most {MAX_DEPTH} deep")
        if not isinstance(obj, dict):
            raise SegmentError("segment.type", path, f"expected an object, got {_json_type(obj)}")
        heads = [k for k in ("all", "any", "not", "field", "attribute", "tag", "rfm", "event") if k in obj]
        if len(heads) != 1:
            what = "none" if not heads else ", ".join(heads)
            raise SegmentError("segment.shape", path, "expected exactly one of all, any, not, field, attribute, "
                               f"tag, rfm, event (found {what})")  # fmt: skip
        return getattr(self, "_" + heads[0])(obj, path, depth)

    def _all(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"all"})
        return AllOf(items=self._children(obj["all"], f"{path}.all", depth))

    def _any(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"any"})
        return AnyOf(items=self._children(obj["any"], f"{path}.any", depth))

    def _not(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"not"})
        return Not(item=self.node(obj["not"], f"{path}.not", depth + 1))

    def _children(self, items: Any, path: str, depth: int) -> tuple[Segment, ...]:
        if not isinstance(items, list):
            raise SegmentError("segment.type", path, f"expected an array, got {_json_type(items)}")
        return tuple(self.node(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items))

    def _field(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"field", "op", "value"}, required={"field", "op"})
        name = obj["field"]
        if not isinstance(name, str) or name not in FIELDS:
            raise SegmentError("segment.unknown_field", f"{path}.field",
                               f"unknown field {name!r}; fields: {', '.join(sorted(FIELDS))}")  # fmt: skip
        spec = FIELDS[name]
        op = _op(obj, path, _OPS[spec.kind])
        value = _field_value(spec, name, op, obj, path)
        return Field(field=name, op=op, value=value)

    def _attribute(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"attribute", "op", "value"}, required={"attribute", "op"})
        key = obj["attribute"]
        if not isinstance(key, str) or not _ATTRIBUTE_KEY.fullmatch(key):
            raise SegmentError("segment.bad_value", f"{path}.attribute",
                               "expected an attribute name: a letter or _, then letters, digits or _ (<= 64)")  # fmt: skip
        op = _op(obj, path, ATTRIBUTE_OPS)
        return Attribute(name=key, op=op, value=_attribute_value(op, obj, path))

    def _tag(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"tag"})
        return Tag(tag=_text(obj["tag"], f"{path}.tag"))

    def _rfm(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"rfm"})
        tier = obj["rfm"]
        if not isinstance(tier, str) or tier not in RFM_TIERS:
            raise SegmentError("segment.bad_value", f"{path}.rfm", f"expected one of {', '.join(RFM_TIERS)}")
        return RfmTier(tier=tier)

    def _event(self, obj: dict, path: str, depth: int) -> Segment:
        _keys(obj, path, {"event", "kind", "state", "within_days", "where", "measure", "op", "value"},
              required={"event"})  # fmt: skip
        source = obj["event"]
        if not isinstance(source, str) or source not in _EVENT_WHERE:  # [] or {} is not hashable
            raise SegmentError("segment.bad_value", f"{path}.event", "expected one of order, item, checkout, activity")
        kind = state = None
        if source == "activity":
            if "kind" not in obj:
                raise SegmentError("segment.missing_key", f"{path}.kind", "an activity condition needs a kind "
                                   "(clicked, replied, message_sent, delivered, or a custom event name)")  # fmt: skip
            kind = _text(obj["kind"], f"{path}.kind")
        elif "kind" in obj:
            raise SegmentError("segment.unknown_key", f"{path}.kind", "kind is for activity conditions only")
        if source == "checkout":
            state = obj.get("state", "started")
            if not isinstance(state, str) or state not in CHECKOUT_STATES:
                raise SegmentError("segment.bad_value", f"{path}.state", f"expected one of {', '.join(CHECKOUT_STATES)}")
        elif "state" in obj:
            raise SegmentError("segment.unknown_key", f"{path}.state", "state is for checkout conditions only")
        within = None
        if "within_days" in obj:
            within = _number(obj["within_days"], f"{path}.within_days")
            if not 0 < within <= MAX_DAYS:
                raise SegmentError("segment.bad_value", f"{path}.within_days", f"expected days in (0, {MAX_DAYS:g}]")
        measure = obj.get("measure", "count")
        if not isinstance(measure, str) or measure not in _EVENT_MEASURES[source]:
            raise SegmentError("segment.bad_value", f"{path}.measure",
                               f"expected one of {', '.join(_EVENT_MEASURES[source])} for {source}")  # fmt: skip
        op = obj.get("op", "gte")
        if not isinstance(op, str) or op not in AGGREGATE_OPS:
            raise SegmentError("segment.bad_op", f"{path}.op", f"expected one of {', '.join(AGGREGATE_OPS)}")
        value = _number(obj.get("value", 1), f"{path}.value")
        where = _where(obj.get("where", {}), _EVENT_WHERE[source], f"{path}.where")
        return Event(source=source, kind=kind, state=state, within_days=within, where=where, measure=measure,
                     op=op, value=value)  # fmt: skip


def _json_type(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, (int, float)):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, dict):
        return "an object"
    return type(obj).__name__


def _keys(obj: dict, path: str, allowed: set[str], required: set[str] | None = None) -> None:
    for key in obj:
        if key not in allowed:
            raise SegmentError("segment.unknown_key", f"{path}.{key}",
                               f"unknown key; allowed here: {', '.join(sorted(allowed))}")  # fmt: skip
    for key in sorted(required or ()):
        if key not in obj:
            raise SegmentError("segment.missing_key", f"{path}.{key}", "required")


def _op(obj: dict, path: str, positive: frozenset[str]) -> str:
    op = obj["op"]
    allowed = positive | {neg for neg, pos in NEGATED.items() if pos in positive}
    if not isinstance(op, str) or op not in allowed:
        raise SegmentError("segment.bad_op", f"{path}.op", f"expected one of {', '.join(sorted(allowed))}")
    return op


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SegmentError("segment.bad_value", path, f"expected a string, got {_json_type(value)}")
    if len(value) > MAX_TEXT:
        raise SegmentError("segment.bad_value", path, f"at most {MAX_TEXT} characters")
    if "\x00" in value:
        raise SegmentError("segment.bad_value", path, "NUL characters are not allowed")
    return value


def _number(value: Any, path: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SegmentError("segment.bad_value", path, f"expected a number, got {_json_type(value)}")
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise SegmentError("segment.bad_value", path, "expected a finite number of magnitude at most 2**53")
    return value


def _list(value: Any, path: str, item: Any) -> tuple:
    if not isinstance(value, list):
        raise SegmentError("segment.bad_value", path, f"expected an array, got {_json_type(value)}")
    if not 1 <= len(value) <= MAX_LIST:
        raise SegmentError("segment.bad_value", path, f"expected 1 to {MAX_LIST} values")
    return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))


def _field_value(spec: FieldSpec, name: str, op: str, obj: dict, path: str) -> Any:
    base = NEGATED.get(op, op)
    vpath = f"{path}.value"
    if base == "exists":
        if "value" in obj:
            raise SegmentError("segment.unknown_key", vpath, f"{op} takes no value")
        return None
    if "value" not in obj:
        raise SegmentError("segment.missing_key", vpath, "required")
    value = obj["value"]

    def scalar(v: Any, p: str) -> Any:
        if spec.kind in ("number", "time"):
            return _number(v, p)
        text = _text(v, p)
        if spec.kind == "enum" and text not in spec.choices:
            raise SegmentError("segment.bad_value", p, f"expected one of {', '.join(sorted(spec.choices))}")
        if spec.kind == "country" and not _COUNTRY.fullmatch(text):
            raise SegmentError("segment.bad_value", p, "expected an ISO 3166 alpha-2 code such as 'US'")
        if spec.kind == "date":
            _date(text, p)
        return text

    if base == "in":
        return _list(value, vpath, scalar)
    if base in ("within_days", "before_days"):
        days = _number(value, vpath)
        if not 0 < days <= MAX_DAYS:
            raise SegmentError("segment.bad_value", vpath, f"expected days in (0, {MAX_DAYS:g}]")
        return days
    if base == "in_next_days":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BIRTHDAY_DAYS:
            raise SegmentError("segment.bad_value", vpath, f"expected whole days from 0 to {MAX_BIRTHDAY_DAYS}")
        return value
    if base == "contains" and (not isinstance(value, str) or not value):
        raise SegmentError("segment.bad_value", vpath, "expected a non-empty string")
    return _text(value, vpath) if base == "contains" else scalar(value, vpath)


def _date(text: str, path: str) -> None:
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        dt.date.fromisoformat(text)
    except ValueError:
        raise SegmentError("segment.bad_value", path, "expected a date YYYY-MM-DD") from None


def _attribute_scalar(v: Any, path: str) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return _text(v, path)
    if isinstance(v, (int, float)):
        return _number(v, path)
    raise SegmentError("segment.bad_value", path, f"expected a string, number or boolean, got {_json_type(v)}")


def _attribute_value(op: str, obj: dict, path: str) -> Any:
    base = NEGATED.get(op, op)
    vpath = f"{path}.value"
    if base == "exists":
        if "value" in obj:
            raise SegmentError("segment.unknown_key", vpath, f"{op} takes no value")
        return None
    if "value" not in obj:
        raise SegmentError("segment.missing_key", vpath, "required")
    value = obj["value"]
    if base == "in":
        return _list(value, vpath, _attribute_scalar)
    if base == "contains":
        if not isinstance(value, str) or not value:
            raise SegmentError("segment.bad_value", vpath, "expected a non-empty string")
        return _text(value, vpath)
    if base in ("gt", "gte", "lt", "lte"):
        return _number(value, vpath)
    return _attribute_scalar(value, vpath)


def _where(obj: Any, allowed: dict[str, frozenset[str] | None], path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(obj, dict):
        raise SegmentError("segment.type", path, f"expected an object, got {_json_type(obj)}")
    out = []
    for key in sorted(obj):
        if key not in allowed:
            hint = ", ".join(sorted(allowed)) or "nothing"
            raise SegmentError("segment.unknown_key", f"{path}.{key}", f"unknown key; allowed here: {hint}")
        choices = allowed[key]

        def item(v: Any, p: str, choices: frozenset[str] | None = choices) -> str:
            text = _text(v, p)
            if choices is not None and text not in choices:
                raise SegmentError("segment.bad_value", p, f"expected one of {', '.join(sorted(choices))}")
            return text

        out.append((key, _list(obj[key], f"{path}.{key}", item)))
    return tuple(out)


def parse_segment(obj: Any) -> Segment:
    """A JSON tree (already decoded, or JSON text/bytes) -> ``Segment``; raises ``SegmentError``."""
    if isinstance(obj, (str, bytes, bytearray)):
        try:
            obj = msgspec.json.decode(obj)
        except msgspec.DecodeError as exc:
            raise SegmentError("segment.json", "$", f"not JSON: {exc}") from None
    return _Parser().node(obj, "$", 0)


def dump_segment(seg: Segment) -> Any:
    """The canonical JSON form (``parse_segment(dump_segment(s)) == s``)."""
    match seg:
        case AllOf(items=items):
            return {"all": [dump_segment(i) for i in items]}
        case AnyOf(items=items):
            return {"any": [dump_segment(i) for i in items]}
        case Not(item=item):
            return {"not": dump_segment(item)}
        case Field(field=f, op=op, value=v):
            return {"field": f, "op": op} | ({} if v is None else {"value": list(v) if isinstance(v, tuple) else v})
        case Attribute(name=n, op=op, value=v):
            return {"attribute": n, "op": op} | ({} if v is None else {"value": list(v) if isinstance(v, tuple) else v})
        case Tag(tag=t):
            return {"tag": t}
        case RfmTier(tier=t):
            return {"rfm": t}
        case Event():
            out: dict[str, Any] = {"event": seg.source}
            if seg.kind is not None:
                out["kind"] = seg.kind
            if seg.state is not None:
                out["state"] = seg.state
            if seg.within_days is not None:
                out["within_days"] = seg.within_days
            if seg.where:
                out["where"] = {k: list(v) for k, v in seg.where}
            return out | {"measure": seg.measure, "op": seg.op, "value": seg.value}
    raise TypeError(f"not a segment node: {seg!r}")


# ---- evaluation -----------------------------------------------------------------------------


def birthday_keys(now: float, days: int) -> frozenset[str]:
    """The ``MM-DD`` of today .. today + days (UTC dates); 29 February birthdays are celebrated on
    1 March in years without one."""
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    keys = set()
    for k in range(days + 1):
        d = today + dt.timedelta(days=k)
        keys.add(f"{d.month:02d}-{d.day:02d}")
        if d.month == 3 and d.day == 1 and not _leap(d.year):
            keys.add("02-29")
    return frozenset(keys)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def compare(op: str, left: Any, right: Any) -> bool:
    """``left op right`` for non-None numbers (as doubles) or strings (by code point)."""
    if not isinstance(left, str):
        left, right = float(left), float(right)
    match op:
        case "eq":
            return left == right
        case "ne":
            return left != right
        case "gt":
            return left > right
        case "gte":
            return left >= right
        case "lt":
            return left < right
        case "lte":
            return left <= right
    raise ValueError(op)


def field_value(view: SubscriberView, name: str) -> Any:
    source = view.subscriber if FIELDS[name].table == "subscribers" else view.stats
    value = getattr(source, name)
    return FIELD_DEFAULTS.get(name) if value is None else value


def field_op_holds(op: str, v: Any, value: Any, now: float) -> bool:
    """``v op value`` for one field value ``v`` (None when missing); negative ops are ``not``."""
    base = NEGATED.get(op, op)
    if base != op:
        return not field_op_holds(base, v, value, now)
    if v is None:
        return False
    match op:
        case "exists":
            return True
        case "in":
            return any(compare("eq", v, x) for x in value)
        case "contains":
            return value in v
        case "within_days":
            return v >= now - value * DAY
        case "before_days":
            return v < now - value * DAY
        case "in_next_days":
            return v[5:10] in birthday_keys(now, value)
    return compare(op, v, value)


def _field_holds(seg: Field, view: SubscriberView, now: float) -> bool:
    return field_op_holds(seg.op, field_value(view, seg.field), seg.value, now)


def _attr_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def attribute_eq(v: Any, value: Any) -> bool:
    """Equal only within one JSON type: ``"1"`` is not ``1``, ``true`` is not ``1``."""
    t = _attr_type(v)
    if t != _attr_type(value):
        return False
    return compare("eq", v, value) if t == "number" else v == value


def _attribute_holds(seg: Attribute, view: SubscriberView) -> bool:
    base = NEGATED.get(seg.op, seg.op)
    if base != seg.op:
        return not _attribute_holds(Attribute(name=seg.name, op=base, value=seg.value), view)
    attrs = view.subscriber.attributes
    v = attrs.get(seg.name) if isinstance(attrs, dict) else None
    if v is None:
        return False
    match seg.op:
        case "exists":
            return True
        case "eq":
            return attribute_eq(v, seg.value)
        case "in":
            return any(attribute_eq(v, x) for x in seg.value)
        case "contains":
            return isinstance(v, str) and seg.value in v
    return _attr_type(v) == "number" and compare(seg.op, v, seg.value)


def event_rows(seg: Event, view: SubscriberView, now: float | None) -> Iterator[tuple[float | None, float]]:
    """``(time, measure)`` of every row the condition reads (window not applied when ``now`` is None)."""
    cutoff = None if now is None or seg.within_days is None else now - seg.within_days * DAY
    where = dict(seg.where)

    def keep(t: float | None, obj: Any) -> bool:
        if cutoff is not None and (t is None or t < cutoff):
            return False
        return matches(obj)

    def matches(obj: Any) -> bool:  # `where` keys name columns of orders or of order_items
        return all(getattr(obj, k) in allowed for k, allowed in where.items() if hasattr(obj, k))

    if seg.source in ("order", "item"):
        for o in view.orders:
            if not keep(o.created_at, o):
                continue
            if seg.source == "order":
                yield o.created_at, (1 if seg.measure == "count" else o.total)
                continue
            for it in o.items:
                if matches(it):
                    m = {"count": 1, "sum": it.price * it.quantity, "quantity": it.quantity}[seg.measure]
                    yield o.created_at, m
    elif seg.source == "checkout":
        for c in view.checkouts:
            if seg.state == "abandoned":
                if c.abandoned_at is None or c.completed_at is not None:
                    continue
                t = c.abandoned_at
            elif seg.state == "completed":
                if c.completed_at is None:
                    continue
                t = c.completed_at
            else:
                t = c.started_at
            if keep(t, c):
                yield t, (1 if seg.measure == "count" else c.value)
    else:
        for a in view.activities:
            if a.kind == seg.kind and keep(a.at, a):
                yield a.at, 1


def aggregate_holds(seg: Event, total: float) -> bool:
    return compare(seg.op, total, seg.value)


def evaluate(seg: Segment, view: SubscriberView, now: float) -> bool:
    """Whether the subscriber of ``view`` is in the segment at ``now``."""
    match seg:
        case AllOf(items=items):
            return all(evaluate(i, view, now) for i in items)
        case AnyOf(items=items):
            return any(evaluate(i, view, now) for i in items)
        case Not(item=item):
            return not evaluate(item, view, now)
        case Field():
            return _field_holds(seg, view, now)
        case Attribute():
            return _attribute_holds(seg, view)
        case Tag(tag=tag):
            return tag in view.tags
        case RfmTier(tier=tier):
            return evaluate(expand_rfm(tier), view, now)
        case Event():
            return aggregate_holds(seg, sum(m for _, m in event_rows(seg, view, now)))
    raise TypeError(f"not a segment node: {seg!r}")


# ---- incremental membership -----------------------------------------------------------------


def walk(seg: Segment) -> Iterator[Segment]:
    yield seg
    match seg:
        case AllOf(items=items) | AnyOf(items=items):
            for i in items:
                yield from walk(i)
        case Not(item=item):
            yield from walk(item)
        case RfmTier(tier=tier):
            yield from walk(expand_rfm(tier))


def dependencies(seg: Segment) -> frozenset[str]:
    """What the segment reads: ``table.column`` for profile fields and aggregates
    (``subscribers.gender``, ``subscriber_stats.total_spent``), ``subscribers.attributes``,
    ``subscriber_tags``, ``orders``, ``order_items``, ``checkouts``, ``activities.<kind>``, and
    ``clock`` when time alone can change membership (a window, ``within_days``, a birthday)."""
    deps: set[str] = set()
    for node in walk(seg):
        match node:
            case Field(field=f, op=op):
                deps.add(f"{FIELDS[f].table}.{f}")
                if NEGATED.get(op, op) in ("within_days", "before_days", "in_next_days"):
                    deps.add("clock")
            case Attribute():
                deps.add("subscribers.attributes")
            case Tag():
                deps.add("subscriber_tags")
            case Event(source="item", where=where, within_days=within) if where and all(c == "category" for c, _ in where):
                # items of these categories only: a new order without one of them cannot change it (its
                # rows are the items of those categories; each orders row it reads through one of them)
                deps.update(f"order_items.category.{v}" for _, values in where for v in values)
                deps.add("orders.stored")  # a stored order changed (its owner, time or status): ``orders``
                if within is not None:
                    deps.add("clock")
            case Event(source=source, kind=kind, within_days=within):
                deps.update({"order": ("orders",), "item": ("orders", "order_items"), "checkout": ("checkouts",),
                             "activity": (f"activities.{kind}",)}[source])  # fmt: skip
                if within is not None:
                    deps.add("clock")
    return frozenset(deps)


# The aggregates an order's upkeep writes (``campaigns.core.aggregates``: its figures, then the scores,
# which read the instants of the last order, click and reply as of ``now``); not the last click,
# message or reply themselves.
_ORDER_STATS = ("orders_count", "total_spent", "first_order_at", "last_order_at", "avg_order_value",
                "last_order_payment_status", "rfm_r", "rfm_f", "rfm_m", "engagement")  # fmt: skip


def new_order_changes(categories: Iterable[str | None], checkout: bool = False) -> frozenset[str]:
    """What a new order (an order id not stored before) changes, for ``affected_by``: ``orders.new``
    (every condition on orders, not those on items of some categories alone), each category of its
    items (``order_items.category.<name>``, the empty name for an item without one), the aggregates
    an order's upkeep writes (``checkout``: it completes one, so the last abandoned checkout and the
    checkouts too). A change to a stored order names ``orders``, ``order_items`` and
    ``subscriber_stats`` whole."""
    return _order_changes(tuple(sorted({c or "" for c in categories})), checkout)


@functools.lru_cache(maxsize=1024)  # once per distinct set of categories: the ingest asks it per order
def _order_changes(categories: tuple[str, ...], checkout: bool) -> frozenset[str]:
    stats = (*_ORDER_STATS, "last_abandoned_checkout_at") if checkout else _ORDER_STATS
    return frozenset({"orders.new", *(f"subscriber_stats.{f}" for f in stats),
                      *(f"order_items.category.{c}" for c in categories), *(("checkouts",) if checkout else ())})  # fmt: skip


@functools.lru_cache(maxsize=1024)
def affected_each(deps: tuple[frozenset[str], ...], changed: frozenset[str]) -> tuple[bool, ...]:
    """``affected_by`` for each of ``deps`` (a tenant's segments): one look-up per distinct change set
    of a pass, not one per segment and change set."""
    return tuple(affected_by(d, changed) for d in deps)


@functools.lru_cache(maxsize=4096)  # a pass asks it for every segment and every distinct change set
def affected_by(deps: frozenset[str], changed: frozenset[str]) -> bool:
    """Whether a change to ``changed`` (table names, e.g. ``Applied.changed``; or finer: ``activities.<kind>``,
    ``new_order_changes``) may change a segment with these ``dependencies``: re-evaluate it for that
    subscriber. A name matches itself; a table's name matches every finer name in it, on either side
    (``orders`` changed: ``orders.stored`` is read; ``orders.new`` changed: ``orders`` is read)."""
    tables = {c.split(".", 1)[0] for c in changed}
    for dep in deps:
        if dep == "clock":
            continue
        if dep in changed or dep.split(".", 1)[0] in changed or ("." not in dep and dep in tables):
            return True
    return False


MAX_CANDIDATES = 2048
EDGE = 1e-3  # seconds past a window's edge: far above the rounding of `now - days * DAY`


def _candidates(seg: Segment, view: SubscriberView, now: float) -> set[float]:
    out: set[float] = set()
    for node in walk(seg):
        match node:
            case Field(field=f, op=op, value=days) if NEGATED.get(op, op) in ("within_days", "before_days"):
                v = field_value(view, f)
                if v is not None:
                    out.add(v + days * DAY + EDGE)
            case Field(op=op, value=days) if NEGATED.get(op, op) == "in_next_days":
                midnight = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(hour=0, minute=0, second=0,
                                                                                   microsecond=0)  # fmt: skip
                for k in range(1, 368):
                    out.add((midnight + dt.timedelta(days=k)).timestamp())
            case Event(within_days=within) if within is not None:
                for t, _ in event_rows(node, view, None):
                    if t is not None:
                        out.add(t + within * DAY + EDGE)
    return {t for t in out if t > now}


def next_change(seg: Segment, view: SubscriberView, now: float) -> float | None:
    """The earliest instant T > now at which time alone changes membership (``evaluate`` at T
    differs from at ``now``, to within ``EDGE``), or None if time alone never will. A window edge
    passing changes a condition just after ``t + days``; only those instants (and UTC midnights for
    birthdays) are checked. With more than ``MAX_CANDIDATES`` of them, the first unchecked one is
    returned (membership *may* change then: the caller re-evaluates, so this stays correct)."""
    if "clock" not in dependencies(seg):
        return None
    current = evaluate(seg, view, now)
    for i, t in enumerate(sorted(_candidates(seg, view, now))):
        if i >= MAX_CANDIDATES:
            return t
        if evaluate(seg, view, t) != current:
            return t
    return None
