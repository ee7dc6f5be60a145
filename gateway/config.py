"""Sluice's configuration: one typed TOML tree, decoded with msgspec.

Unknown keys are rejected and every error names the key path (``core.carriers[0].rate``), so a
typo never silently falls back to a default. Nothing is read at import time: ``load(path)`` and
``loads(text)`` are the only ways in. Secrets are never in the file: a key ending in ``_env``
names the environment variable that holds the secret.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from importlib import resources
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Literal

import msgspec

from carriers.http.settings import HttpSettings
from carriers.smpp.connector import SmppSettings
from gateway.core.keywords import KeywordSettings
from gateway.core.settings import CoreSettings
from gateway.core.targets import TargetPolicy, url_problem
from gateway.errors import ConfigError
from gateway.webhook_settings import WebhookSettings  # its own module: the delivery process imports only it

__all__ = ["Config", "default_text", "load", "loads", "missing_environment", "target_policy"]


class Tenant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An API client. Its key is never in the file: ``key_sha256`` is the hex SHA-256 of the key,
    or ``key_env`` names the environment variable holding the key itself."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    key_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    key_env: str | None = None
    webhook_secret_env: str | None = None
    requests_per_second: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    burst: Annotated[int, msgspec.Meta(ge=1)] = 400
    # Inbound (MO) messages sent to one of these sender ids / short codes / numbers are this
    # tenant's (compared without '+' and case). See gateway/runtime/inbound.py for the rest.
    senders: list[Annotated[str, msgspec.Meta(min_length=1, max_length=20)]] = []
    # Inbound messages that are not keywords are POSTed here (signed as webhooks are).
    inbound_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] | None = None
    keywords: KeywordSettings = msgspec.field(default_factory=KeywordSettings)
    # An operator's key: may also list the inbound messages no tenant owns (GET /v1/inbound?unrouted=1).
    operator: bool = False

    def __post_init__(self) -> None:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"tenant {self.name!r}: give exactly one of key_sha256 and key_env")


class Operator(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who runs the gateway: an operator's key reads ``/metrics`` and the full ``/v1/carriers``
    (every carrier's queues and links: all tenants' traffic), which tenants' keys cannot. The key,
    as for tenants: ``key_sha256`` (hex SHA-256 of the key) or ``key_env`` (a variable holding it)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    key_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    key_env: str | None = None

    def __post_init__(self) -> None:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"operator {self.name!r}: give exactly one of key_sha256 and key_env")


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"  # loopback unless configured otherwise
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    # Slow clients (slowloris): a request's head must arrive within header_timeout seconds and be
    # at most max_head_bytes (else 408 / 431 and the connection is closed); the server waits for a
    # request's body at most body_timeout seconds in all (else 408).
    header_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_head_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    body_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # At most this many client connections open (idle sockets included): one more closes the oldest
    # connection waiting for a request (or refuses itself, 503, when every one is in a request). Fitted
    # into the process's open-files limit at start (gateway.http_guard.connection_caps).
    max_connections: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 4096
    # Worker processes that check the recipients of large streamed (NDJSON) jobs before the 202,
    # while the event loop admits and writes: "auto" is one per CPU (at most 8); 0 checks them
    # in the event loop's process.
    ingest_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] | Literal["auto"] = "auto"
    tenants: list[Tenant] = []
    # Operators' keys: /metrics and the full /v1/carriers need one (none: nobody reads them).
    operators: list[Operator] = []


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "sqlite:///sluice.db"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class InboundSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Inbound (MO) messages: keyword replies and forwarding (gateway/runtime/inbound.py)."""

    reply_category: str = "transactional"  # keyword replies: no quiet hours, no cap, not suppressed
    # An MO without a carrier id is a redelivery if the same carrier brought the same sender,
    # address, numbering and text within this many seconds (with an id: whenever it comes again).
    dedupe_window: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    # A clarifying question (opt_out_uncertain = "ask") waits this long for its YES.
    question_ttl: Annotated[float, msgspec.Meta(gt=0)] = 7 * 86_400.0
    # An opt-out sent to an address no tenant lists suppresses its sender for every tenant that
    # messaged that number within this many days.
    unrouted_opt_out_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0


class CarrierLinks(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach each carrier named in ``core.carriers`` (the same ``name``)."""

    smpp: list[SmppSettings] = []
    http: list[HttpSettings] = []


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    core: CoreSettings = msgspec.field(default_factory=CoreSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    carriers: CarrierLinks = msgspec.field(default_factory=CarrierLinks)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    inbound: InboundSettings = msgspec.field(default_factory=InboundSettings)

    def __post_init__(self) -> None:
        _no_twice(self)
        if self.inbound.reply_category not in self.core.categories:
            raise ValueError(f"inbound.reply_category {self.inbound.reply_category!r} is not one of core.categories")
        owner: dict[str, str] = {}
        for t in self.api.tenants:
            for sender in t.senders:
                key = sender.lstrip("+").casefold()
                if owner.setdefault(key, t.name) != t.name:
                    raise ValueError(f"sender {sender!r} belongs to both tenants {owner[key]!r} and {t.name!r}")
        policy = target_policy(self)
        for i, t in enumerate(self.api.tenants):
            if t.inbound_url is not None and (problem := url_problem(t.inbound_url, policy)) is not None:
                raise ValueError(f"api.tenants[{i}].inbound_url: {problem}")
        for c in self.core.carriers:
            if c.default_region is not None and c.default_region not in _regions():
                raise ValueError(f"core.carriers: {c.name!r} default_region {c.default_region!r} is not a region phonenumbers knows")
        known = {c.name for c in self.core.carriers}
        for link in self.carriers.smpp:
            if link.name not in known:
                raise ValueError(f"carriers.smpp: {link.name!r} is not one of core.carriers {sorted(known)}")
        for http in self.carriers.http:
            if http.name not in known:
                raise ValueError(f"carriers.http: {http.name!r} is not one of core.carriers {sorted(known)}")


def _no_twice(cfg: Config) -> None:
    """A name or key given twice is a mistake the rest would hide: two tenants of one name share
    jobs, suppressions and webhooks; two links to one carrier, one replaced the other; one key for
    two tenants (or two operators) is answered as whichever came last. (A tenant's key may also be
    an operator's: the two tables are apart, and that key then reads /metrics too.)"""
    lists = {"api.tenants": cfg.api.tenants, "api.operators": cfg.api.operators}
    for section, entries in lists.items():
        seen: dict[str, int] = {}
        for i, e in enumerate(entries):
            if (j := seen.setdefault(e.name, i)) != i:
                raise ValueError(f"{section}[{i}].name: {e.name!r} is already {section}[{j}]'s")
    links: dict[str, str] = {}
    for section, group in (("carriers.smpp", cfg.carriers.smpp), ("carriers.http", cfg.carriers.http)):
        for i, link in enumerate(group):
            if (other := links.setdefault(link.name, f"{section}[{i}]")) != f"{section}[{i}]":
                raise ValueError(f"{section}[{i}].name: carrier {link.name!r} already has a link, {other}")
    for section, entries in lists.items():
        keys: dict[str, str] = {}
        for i, e in enumerate(entries):
            for field in ("key_sha256", "key_env"):
                value = getattr(e, field)
                if value is not None and (other := keys.setdefault(f"{field}={value}", f"{section}[{i}]")) != f"{section}[{i}]":
                    raise ValueError(f"{section}[{i}].{field}: the same key as {other}'s (each client its own key)")


def target_policy(cfg: Config) -> TargetPolicy:
    """Where callback_url and inbound_url may point: public addresses, the networks of
    ``webhooks.allow_private``, and never the gateway's own API nor its carriers' ports."""
    own = [(cfg.api.host, cfg.api.port)] + [(link.host, link.port) for link in cfg.carriers.smpp]
    for http in cfg.carriers.http:
        parts = urlsplit(http.url)
        if parts.hostname:
            with contextlib.suppress(ValueError):
                own.append((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    return TargetPolicy(cfg.webhooks.allow_private, own)
def _regions() -> frozenset[str]:
    import phonenumbers  # only when a region is configured

    return frozenset(phonenumbers.SUPPORTED_REGIONS)


def loads(text: str, *, path: str | None = None) -> Config:
    try:
        raw = tomllib.loads(text.removeprefix("\ufeff"))  # a byte order mark (saved by Notepad): not TOML's
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from exc
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        message, key = _split_path(str(exc))
        raise ConfigError(message, key=key, path=path) from exc


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path=str(p)) from exc
    return loads(text, path=str(p))


def missing_environment(cfg: Config, environ: Mapping[str, str]) -> list[ConfigError]:
    """One error for each ``*_env`` key of the tree whose variable is unset or empty in
    ``environ``, naming the variable and the key (``api.tenants[0].key_env``): what ``serve``
    would otherwise meet at start-up. ``sluice check-config`` reports them all."""
    errors: list[ConfigError] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, msgspec.Struct):
            for name in node.__struct_fields__:
                value = getattr(node, name)
                key = f"{path}.{_encoded_name(node, name)}" if path else _encoded_name(node, name)
                if name.endswith("_env") and isinstance(value, str):
                    if not environ.get(value):
                        errors.append(ConfigError(f"environment variable {value!r} is not set", key=key))
                else:
                    walk(value, key)
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, dict):
            for k, item in node.items():
                walk(item, f"{path}.{k}")

    walk(cfg, "")
    return errors


def _encoded_name(struct: msgspec.Struct, name: str) -> str:
    """A field's name as written in the TOML (a struct may rename its fields)."""
    fields = struct.__struct_fields__
    return struct.__struct_encode_fields__[fields.index(name)]


def default_text() -> str:
    """The embedded default config (``config/sluice.toml``, shipped inside the package too)."""
    return resources.files("gateway").joinpath("sluice.toml").read_text(encoding="utf-8")


_AT = re.compile(r"^(.*?)(?: - at `\$\.?(.*)`)?$", re.S)
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


def _split_path(text: str) -> tuple[str, str | None]:
    """msgspec says "... - at `$.core.carriers[0].rate`"; keep the message and the key path."""
    m = _AT.match(text)
    if m is None:
        return text, None
    message, key = m.group(1), m.group(2) or None
    if (named := _NAMED.search(message)) is not None:  # msgspec's path stops at the table holding it
        key = f"{key}.{named.group(1)}" if key else named.group(1)
    return message, key
