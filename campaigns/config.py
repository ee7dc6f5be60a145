"""The ``[campaigns]`` tree of Sluice's TOML config, typed (msgspec, unknown keys refused, errors name
the key path). Secrets are never in the file: ``*_env`` keys name environment variables. Nothing is
read at import time; ``loads``/``load`` read a whole Sluice config file and take its ``[campaigns]``
table (the rest is the gateway's)::

    [campaigns]
    store_url = "sqlite:///campaigns.db"      # or "postgresql://user@host/db"
    port = 8090
    gateway_url = "http://127.0.0.1:8080"      # the gateway's public HTTP API
    public_url = "https://sms.shop.example"    # where forms and the pop-up script are served from

    [[campaigns.tenants]]
    name = "acme"                               # the gateway's tenant of the same shop
    key_env = "CAMPAIGNS_KEY_ACME"              # or key_sha256 = "<hex sha256 of the key>"
    gateway_key_env = "SLUICE_KEY_ACME"         # this shop's key for the gateway's API
    webhook_secret_env = "SLUICE_WEBHOOK_ACME"  # verifies what the gateway POSTs to us
    short_domain = "sl.ui"                      # campaign short links: https://sl.ui/<code>
    link_key_env = "CAMPAIGNS_LINKS_ACME"       # the secret link and discount codes are minted with
    time_zone = "Europe/Paris"                  # the shop's clock
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from collections.abc import Mapping
import os
from typing import Annotated, Any, Literal

import msgspec

from campaigns.errors import ConfigError, schema_field

__all__ = ["AUTO_FLOW_WORKERS_MAX", "CampaignSettings", "SignupSettings", "TenantSettings", "from_table", "load", "loads", "missing_environment"]


class SignupSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Keyword and double opt-in texts of one shop (seed 002: keywords; seed 001: welcome series)."""

    keywords: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{2,20}$")]] = msgspec.field(default_factory=lambda: ["JOIN"])
    confirm_words: list[Annotated[str, msgspec.Meta(min_length=1, max_length=20)]] = msgspec.field(
        default_factory=lambda: ["Y", "YES", "OUI", "SI", "JA", "DA", "是", "是的"])  # + Romanian, Chinese (the seeds')
    shop_name: Annotated[str, msgspec.Meta(min_length=1, max_length=60)] = "our shop"
    # The double opt-in request: the disclosure the subscriber sees by SMS (recorded with its hash).
    confirm_text: Annotated[str, msgspec.Meta(min_length=1, max_length=640)] = (
        "{shop}: reply Y to confirm you want recurring marketing texts. Msg & data rates may apply. "
        "Msg frequency varies. Reply STOP to cancel, HELP for help."
    )
    disclosure_version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "sms-1"
    welcome_text: Annotated[str, msgspec.Meta(min_length=1, max_length=640)] = (
        "{shop}: you're in! Welcome. Reply STOP to cancel."
    )
    welcome_media_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] | None = None  # an MMS welcome
    sender: str | None = None  # the short code / number people text the keyword to (for sms: links)


Colour = Annotated[str, msgspec.Meta(pattern=r"^#[0-9a-fA-F]{6}$")]


class FormSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The hosted sign-up form and the embeddable pop-up (seed 002 "pop-ups"): text, look, legal text
    (recorded as the disclosure of every opt-in through them), and when/how often the pop-up shows."""

    title: Annotated[str, msgspec.Meta(min_length=1, max_length=120)] = "Get 10% off your first order"
    text: Annotated[str, msgspec.Meta(max_length=500)] = "Join our text club for offers and early access."
    button: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] = "Sign me up"
    legal_text: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)] = (
        "By submitting this form, you agree to receive recurring automated marketing text messages from {shop} "
        "at the number provided. Consent is not a condition of purchase. Msg & data rates may apply. "
        "Msg frequency varies. Reply HELP for help and STOP to cancel."
    )
    legal_version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "form-1"
    background: Colour = "#ffffff"
    foreground: Colour = "#1a1a1a"
    accent: Colour = "#0b6e4f"
    font: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9 ,'-]{1,100}$")] = "system-ui, sans-serif"
    # The pop-up: shown on the first trigger that fires, at most once every `every_days` per visitor.
    trigger_scroll_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = 50
    trigger_delay_s: Annotated[float, msgspec.Meta(ge=0, le=600)] | None = 8.0
    trigger_exit_intent: bool = True
    every_days: Annotated[float, msgspec.Meta(ge=0, le=365)] = 7.0
    ask_email: bool = False
    # Submissions per client IP per hour (each may text a confirmation: SMS pumping protection).
    max_per_ip_per_hour: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10


class TenantSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    key_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    key_env: str | None = None
    gateway_key_env: str | None = None
    webhook_secret_env: str | None = None
    default_region: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")] | None = None  # numbers without '+'
    signup: SignupSettings = msgspec.field(default_factory=SignupSettings)
    form: FormSettings = msgspec.field(default_factory=FormSettings)
    # Campaigns (issue 18): short links on this domain (https://{short_domain}/{code}, at most 22
    # characters: the domain leaves 5 to 8 for the code), keyed with the secret in link_key_env
    # (short-link and discount codes are HMACs of it: unguessable, and the same on a relaunch).
    # At most 8 characters (sl.ui, acme.co): a longer one leaves no room for a 5-character code.
    short_domain: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9.-]{3,8}$")] | None = None
    link_key_env: str | None = None
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"  # the shop's clock (reports, schedule)
    # The shop's currency (ISO 4217): orders in any other are refused (422 foreign_currency), so that
    # total_spent, avg_order_value, the RFM scores, segments and revenue never add two currencies. Unset:
    # the currency of the tenant's earliest stored order (the first order fixes it).
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] | None = None
    # A short-link hit this close to the message's delivery (either side) is a link-preview fetch,
    # not a person: redirected, not counted (core.links.classify_hit).
    click_min_delay_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    # Attribution (docs/CAMPAIGNS-SENDING.md): an order goes to the last click within click_window_s,
    # else the last delivery within view_window_s; a STOP within opt_out_window_s of a send is charged
    # to it, and a campaign's opt-out rate at or over opt_out_alert raises its alert.
    click_window_s: Annotated[float, msgspec.Meta(gt=0, le=90 * 86400)] = 5 * 86400.0
    view_window_s: Annotated[float, msgspec.Meta(ge=0, le=90 * 86400)] = 86400.0
    opt_out_window_s: Annotated[float, msgspec.Meta(gt=0, le=90 * 86400)] = 3 * 86400.0
    opt_out_alert: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.005

    def __post_init__(self) -> None:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"tenant {self.name!r}: give exactly one of key_sha256 and key_env")


AUTO_FLOW_WORKERS_MAX = 2  # flow_workers = "auto": one per CPU up to this many (docs/BENCHMARKS.md)


class CampaignSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    store_url: str = "sqlite:///campaigns.db"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8090
    gateway_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = "http://127.0.0.1:8080"
    public_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] | None = None
    abandon_after: Annotated[float, msgspec.Meta(gt=0)] = 3600.0  # seconds until a checkout is abandoned
    sync_interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 2.0  # gateway link rounds (push, pull)
    # Segments with time windows are also recomputed whole this often (events and per-subscriber
    # timers move people in and out at once; this catches everyone no event touched).
    segment_rebuild_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    scores_refresh_s: Annotated[float, msgspec.Meta(gt=0)] = 86_400.0  # RFM recency / engagement as of now
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    # A request's body must arrive within this many seconds in all (else 408 body_timeout): a slow
    # client (slowloris) cannot hold a request, its task and its socket for ever (as the gateway's api.body_timeout).
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    # A request's head (request line and headers) must arrive within header_timeout_s, from the
    # connection or the first byte of the request, and be at most max_head_bytes (else 408 / 431 and
    # the connection closed; gateway.http_guard, as the gateway's api.header_timeout / max_head_bytes):
    # a client dribbling headers, or connecting and sending nothing, cannot hold a connection for ever.
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    max_head_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 64 * 1024
    # At most this many client connections open on the API's port (idle sockets included): one more
    # closes the oldest connection waiting for a request (or refuses itself, 503, when every one is in
    # a request); fitted, with short_link_max_connections, into the process's open-files limit.
    max_connections: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 4096
    # Flows (issue 19): how often the runtime looks for queued inputs and due timers when nothing
    # woke it (a reply or an event wakes it at once).
    flows_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    # Where the flow runtime runs (docs/CAMPAIGNS-FLOWS.md, "Several workers"): 0, in the serve
    # process (one runtime); N, N child processes supervised by serve, worker p of N draining the
    # inputs, firing the timers and posting the sends of the subscribers id % N == p (a reply is
    # still applied by serve, the process that receives it); "auto", one per CPU, at most
    # ``AUTO_FLOW_WORKERS_MAX`` (measured: docs/BENCHMARKS.md, "Flows: the workers serve runs").
    flow_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] | Literal["auto"] = "auto"
    # The short domains' own listener (campaigns/service/short_http.py): GET|HEAD /{code} only, without
    # the API's framework. None: off (the API's port still answers /{code} and /l/{code}); 0: any port.
    short_link_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    short_link_head_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0  # a request head's first byte to its end
    short_link_max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    # A set-based launch's recipients are written this many at a time (whole batches), each chunk
    # one transaction, its batches posted while the next is written (docs/ARCHITECTURE.md, "A
    # chunked freeze"); 0: the whole audience in one transaction before the first post. Unset: 20,000
    # on PostgreSQL, 0 on SQLite (measured: chunks pay on PostgreSQL, cost on SQLite's one writer).
    launch_freeze_chunk: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # A launch's batches posted to the gateway and not yet answered at once: 1, each batch posted
    # once the one before is answered; 2 or more, the gateway reads and checks the next job while
    # it writes and answers this one (docs/ARCHITECTURE.md, "Which core does what during a launch":
    # measured no gain on a loaded machine, so not the default).
    launch_post_window: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    # A launch with one send time (now, or at an instant) and a text no recipient can change the links
    # of is frozen as a stream, this many recipients at a time (whole batches) in subscriber id order,
    # each chunk's batches posted while the next is frozen (docs/ARCHITECTURE.md, "A streamed
    # freeze"). Unset: 20,000 on both engines. 0: no stream (the plan of the whole audience first).
    launch_stream_chunk: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # A stream's chunks frozen at once: 2, the next chunk started on a second connection once this
    # one's audience is known (docs/ARCHITECTURE.md, "Two chunks of a stream at once"). Unset: 2 on
    # PostgreSQL (the server's statements on two cores), 1 on SQLite (one writer whatever the connections).
    launch_stream_window: Annotated[int, msgspec.Meta(ge=1, le=2)] | None = None
    tenants: list[TenantSettings] = []

    def __post_init__(self) -> None:
        if not self.store_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"store_url {self.store_url!r}: use sqlite:///path or postgresql://...")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenants: a name appears twice")

    def flow_worker_count(self, cpus: int | None = None) -> int:
        """How many flow worker processes ``serve`` runs (0: the runtime in the serve process)."""
        if self.flow_workers != "auto":
            return self.flow_workers
        return max(1, min(AUTO_FLOW_WORKERS_MAX, cpus if cpus is not None else (os.cpu_count() or 1)))




def from_table(table: Any, *, path: str | None = None) -> CampaignSettings:
    try:
        return msgspec.convert(table, CampaignSettings)
    except msgspec.ValidationError as exc:
        message, at = schema_field(str(exc))  # a missing or unknown key named too
        key = "campaigns" + (f".{at}" if at else "")
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{message}", key=key) from exc


def loads(text: str, *, path: str | None = None) -> CampaignSettings | None:
    """The ``[campaigns]`` table of a Sluice config text, or None when it has none."""
    try:
        raw = tomllib.loads(text.removeprefix("\ufeff"))  # a byte order mark (saved by Notepad): not TOML's
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path + ': ' if path else ''}not valid TOML: {exc}") from exc
    return from_table(raw["campaigns"], path=path) if "campaigns" in raw else None


def load(path: str | Path) -> CampaignSettings | None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    return loads(text, path=str(path))


def missing_environment(settings: CampaignSettings, environ: Mapping[str, str]) -> list[ConfigError]:
    """One error per ``*_env`` key whose variable is unset or empty (``campaigns.tenants[0].key_env``),
    as the gateway's ``missing_environment`` does for its own tree."""
    errors = []
    for i, t in enumerate(settings.tenants):
        for name in ("key_env", "gateway_key_env", "webhook_secret_env", "link_key_env"):
            var = getattr(t, name)
            if var is not None and not environ.get(var):
                errors.append(ConfigError(f"environment variable {var!r} is not set", key=f"campaigns.tenants[{i}].{name}"))
    return errors
