"""`sluice sim http`: a REST SMS carrier, generic JSON or Twilio-style, on ``carriers.http.wire``.

It answers ``POST /messages`` (generic: a batch per request) or
``POST /2010-04-01/Accounts/{sid}/Messages.json`` (twilio: one form per request) with carrier ids,
and misbehaves on demand, the way real carriers do:

- ``tps``: never more than this many messages accepted in any 1-second window; a request that
  would go over is answered 429 with ``Retry-After`` (whole seconds, RFC 9110 §10.2.3), and
  ``throttle_burst`` answers *everything* 429 for DURATION seconds every EVERY seconds (storms);
- ``error_rate``: that fraction of requests answered 5xx, either ``before`` taking the messages
  (503) or ``after`` (500: the messages were taken, the answer says otherwise: the case
  idempotency keys exist for); ``stall_rate``: that fraction taken, then answered only after
  ``stall_s`` (the client times out); ``latency_ms`` on every answer;
- numbers starting with ``reject_prefix`` are refused with code 21211 (Twilio's "invalid To").

``Idempotency-Key`` is honoured as Stripe does: the answer to a key is stored once the messages
are taken and replayed for the same key (counted ``duplicates_avoided``); a key still being
worked on gets 409. Every message is also recognised by its ``client_ref`` (generic) or its
(To, Body) (twilio): one taken twice is counted in ``duplicates_accepted``, which a correct
client keeps at 0.

Receipts are POSTed ``receipt_delay`` seconds after acceptance to ``receipt_url``, signed
(generic: ``X-Sluice-Signature`` HMAC-SHA256 with ``receipt_secret``; twilio:
``X-Twilio-Signature`` with ``auth_token``), batched up to ``receipt_batch`` per POST for the
generic profile. With ``inbound_url`` and ``mo_rate`` it posts inbound messages too, every
``stop_every``-th one saying STOP.

Run as a process it prints ``{"listening": port}`` when ready, and its counters (including
``max_accepted_1s``) as one JSON line on SIGUSR1 and on exit.
"""

from __future__ import annotations

import base64
import logging
import math
import random
import time
from collections import deque
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import anyio
import anyio.abc
import click
import httpx
import msgspec

from carriers.http.profiles import generic, twilio
from carriers.http.wire import Incoming, Reply, serve_http
from carriers.simulating import parse_burst, serve_until_signalled

__all__ = ["HttpCarrierSimulator", "HttpSimSettings", "run_http_simulator", "sim_http"]

log = logging.getLogger(__name__)

_JSON = [("content-type", "application/json")]


class HttpSimSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8900
    profile: Literal["generic", "twilio"] = "generic"
    tps: float | None = None  # accepted messages per second (None: no limit)
    throttle_burst: tuple[float, float] | None = None  # (every s, for s): answer everything 429
    error_rate: float = 0.0
    error_when: Literal["before", "after"] = "after"
    stall_rate: float = 0.0
    stall_s: float = 30.0
    latency_ms: float = 0.0
    reject_prefix: str = "+999"
    auth_token: str | None = None  # required token (generic: Bearer; twilio: Basic account:token)
    account: str | None = None  # twilio: required account SID (None: any)
    receipt_url: str | None = None
    receipt_secret: str | None = None  # generic receipts' HMAC key (twilio signs with auth_token)
    receipt_delay: float = 1.0
    receipt_batch: int = 500
    undeliv_rate: float = 0.0
    inbound_url: str | None = None
    mo_rate: float = 0.0
    stop_every: int = 0
    seed: int | None = None


_FIELDS = (
    "requests", "messages", "accepted", "rejected", "throttled", "throttled_messages", "errors_5xx",
    "stalled", "conflicts", "duplicates_avoided", "duplicates_accepted", "auth_failures", "bad_requests",
    "max_accepted_1s", "receipts_sent", "receipts_acked", "receipts_failed", "mos_sent", "mos_acked",
)  # fmt: skip


class _GenericMessage(msgspec.Struct, frozen=True, rename={"sender": "from"}):
    to: str
    sender: str = ""
    text: str = ""
    client_ref: str = ""
    media_urls: list[str] = []


class _GenericBatch(msgspec.Struct, frozen=True):
    messages: list[_GenericMessage]


_batch = msgspec.json.Decoder(_GenericBatch)
_encode = msgspec.json.encode


class HttpCarrierSimulator:
    """The simulator's state. ``serve`` runs it; ``counters`` reads it at any time."""

    def __init__(self, settings: HttpSimSettings | None = None) -> None:
        self.settings = s = settings or HttpSimSettings()
        self.port: int | None = None
        self._c = dict.fromkeys(_FIELDS, 0)
        self._rng = random.Random(s.seed)
        self._next_id = 0
        self._window: deque[tuple[float, int]] = deque()  # (when, messages accepted)
        self._in_window = 0
        self._answers: dict[str, Reply] = {}  # idempotency key -> the stored answer
        self._working: set[str] = set()
        self._seen: set[int] = set()  # hashes of messages taken (duplicate detection)
        self._receipts: deque[tuple[float, Any]] = deque()
        self._wake = anyio.Event()
        self._t0 = 0.0
        self._secret = (s.auth_token if s.profile == "twilio" else s.receipt_secret) or ""

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._c)
        out["receipts_pending"] = len(self._receipts)
        return out

    # -- serving -------------------------------------------------------------------------------

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``settings.host:port`` (0: a free port, reported through ``task_status``)."""
        s = self.settings
        self._t0 = anyio.current_time()
        async with httpx.AsyncClient(timeout=10.0) as client, anyio.create_task_group() as tg:
            self.port = await tg.start(serve_http, self.handle, s.host, s.port)
            if s.receipt_url:
                tg.start_soon(self._post_receipts, client)
            if s.inbound_url and s.mo_rate > 0:
                tg.start_soon(self._post_inbound, client)
            task_status.started(self.port)

    async def handle(self, req: Incoming) -> Reply:
        s = self.settings
        c = self._c
        c["requests"] += 1
        if req.method != "POST":
            return 404, _JSON, b'{"error":{"code":404,"name":"not found"}}'
        if not self._authorized(req):
            c["auth_failures"] += 1
            return 401, _JSON, b'{"error":{"code":20003,"name":"authenticate"},"code":20003,"message":"Authenticate"}'
        key = req.headers.get("idempotency-key")
        if key:
            stored = self._answers.get(key)
            if stored is not None:
                c["duplicates_avoided"] += 1
                await self._latency()
                return stored
            if key in self._working:
                c["conflicts"] += 1
                return 409, _JSON, b'{"error":{"code":409,"name":"a request with this key is in progress"}}'
        try:
            messages = self._messages(req)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, UnicodeDecodeError):
            c["bad_requests"] += 1
            return 400, _JSON, b'{"error":{"code":400,"name":"bad request"},"code":400,"message":"bad request"}'
        n = len(messages)
        c["messages"] += n
        now = anyio.current_time()
        if self._throttling(now, n):
            c["throttled"] += 1
            c["throttled_messages"] += n
            await self._latency()
            return 429, [*_JSON, ("retry-after", str(self._retry_after(now, n)))], b'{"error":{"code":20429,"name":"too many requests"}}'
        if s.error_rate and s.error_when == "before" and self._rng.random() < s.error_rate:
            c["errors_5xx"] += 1
            await self._latency()
            return 503, _JSON, b'{"error":{"code":503,"name":"unavailable"}}'
        if key:
            self._working.add(key)
        try:
            answer = self._take(messages, now)
            if key:
                self._remember(key, answer)
            if s.stall_rate and self._rng.random() < s.stall_rate:
                c["stalled"] += 1
                await anyio.sleep(s.stall_s)
            if s.error_rate and s.error_when == "after" and self._rng.random() < s.error_rate:
                c["errors_5xx"] += 1
                answer = (500, _JSON, b'{"error":{"code":500,"name":"internal error"}}')
            await self._latency()
        finally:
            if key:
                self._working.discard(key)
        return answer

    async def _latency(self) -> None:
        if self.settings.latency_ms > 0:
            await anyio.sleep(self.settings.latency_ms / 1000)

    def _authorized(self, req: Incoming) -> bool:
        s = self.settings
        if s.profile == "twilio":
            parts = req.target.split("?")[0].split("/")
            # /2010-04-01/Accounts/{sid}/Messages.json
            if len(parts) != 5 or parts[2] != "Accounts" or parts[4] != "Messages.json":
                return False
            if s.account is not None and parts[3] != s.account:
                return False
            if s.auth_token is None:
                return True
            expected = "Basic " + base64.b64encode(f"{parts[3]}:{s.auth_token}".encode()).decode()
            return req.headers.get("authorization") == expected
        return s.auth_token is None or req.headers.get("authorization") == f"Bearer {s.auth_token}"

    def _messages(self, req: Incoming) -> list[tuple[str, str, str, str]]:
        """(to, from, text, identity) of each message in the request."""
        if self.settings.profile == "twilio":
            form = parse_qsl(req.body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(req.body))
            f = dict(form)
            if "To" not in f:
                raise ValueError("no To")
            return [(f["To"], f.get("From", ""), f.get("Body", ""), f"{f['To']}\0{f.get('Body', '')}")]
        batch = _batch.decode(req.body)
        return [(m.to, m.sender, m.text, m.client_ref or f"{m.to}\0{m.text}") for m in batch.messages]

    def _throttling(self, now: float, n: int) -> bool:
        s = self.settings
        if s.throttle_burst is not None:
            every, duration = s.throttle_burst
            if (now - self._t0) % every < duration:
                return True
        window = self._window
        while window and window[0][0] <= now - 1.0:
            self._in_window -= window.popleft()[1]
        return s.tps is not None and self._in_window + n > s.tps

    def _retry_after(self, now: float, n: int) -> int:
        """Whole seconds until ``n`` more fit (at least 1)."""
        s = self.settings
        if s.throttle_burst is not None:
            every, duration = s.throttle_burst
            into = (now - self._t0) % every
            if into < duration:
                return max(1, math.ceil(duration - into))
        need = self._in_window + n - (s.tps or 0)
        freed = 0
        for when, k in self._window:
            freed += k
            if freed >= need:
                return max(1, math.ceil(when + 1.0 - now))
        return 1

    def _take(self, messages: list[tuple[str, str, str, str]], now: float) -> Reply:
        s = self.settings
        c = self._c
        twilio_style = s.profile == "twilio"
        items: list[Any] = []
        accepted = 0
        for to, sender, text, identity in messages:
            if to.startswith(s.reject_prefix):
                c["rejected"] += 1
                items.append(None)
                continue
            h = hash(identity)
            if h in self._seen:
                c["duplicates_accepted"] += 1
            elif len(self._seen) < 5_000_000:
                self._seen.add(h)
            self._next_id += 1
            mid = f"SM{self._next_id:032x}" if twilio_style else str(self._next_id)
            items.append(mid)
            accepted += 1
            if s.receipt_url:
                self._receipts.append((now + s.receipt_delay, mid))
        if accepted:
            c["accepted"] += accepted
            self._window.append((now, accepted))
            self._in_window += accepted
            c["max_accepted_1s"] = max(c["max_accepted_1s"], self._in_window)
            if len(self._receipts) == accepted:
                self._wake.set()
        if twilio_style:
            (mid,) = items
            if mid is None:
                return 400, _JSON, _encode({"code": 21211, "message": "The 'To' number is not a valid phone number.",
                                            "status": 400})  # fmt: skip
            return 201, _JSON, _encode({"sid": mid, "status": "queued"})
        out = [{"id": m} if m is not None else {"error": {"code": 21211, "name": "invalid number"}} for m in items]
        return 200, _JSON, _encode({"messages": out})

    def _remember(self, key: str, answer: Reply) -> None:
        answers = self._answers
        if len(answers) >= 1_000_000:  # keys expire oldest first (carriers keep them ~24 h)
            for old in list(answers)[:100_000]:
                del answers[old]
        answers[key] = answer

    # -- what the carrier posts back ---------------------------------------------------------------

    def _sign(self, url: str, body: bytes) -> dict[str, str]:
        if not self._secret:
            return {}
        profile = twilio if self.settings.profile == "twilio" else generic
        return profile.sign(url, body, self._secret, time.time())

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes, content_type: str) -> bool:
        headers = {"content-type": content_type, **self._sign(url, body)}
        for attempt in range(3):
            try:
                resp = await client.post(url, content=body, headers=headers)
                if resp.status_code < 300:
                    return True
                log.info("sim.callback_refused url=%s status=%d", url, resp.status_code)
                if resp.status_code < 500:
                    return False
            except httpx.HTTPError as exc:
                log.info("sim.callback_failed url=%s error=%r", url, exc)
            await anyio.sleep(0.5 * (attempt + 1))
        return False

    def _receipt_state(self) -> tuple[str, int | None]:
        s = self.settings
        if s.undeliv_rate and self._rng.random() < s.undeliv_rate:
            return "undelivered", 30003
        return "delivered", None

    async def _post_receipts(self, client: httpx.AsyncClient) -> None:
        s = self.settings
        url = s.receipt_url
        assert url is not None
        limiter = anyio.Semaphore(16)  # released by the task that posts
        async with anyio.create_task_group() as tg:
            while True:
                due = self._receipts
                now = anyio.current_time()
                if not due or due[0][0] > now:
                    with anyio.move_on_after(None if not due else due[0][0] - now):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                take = 1 if s.profile == "twilio" else s.receipt_batch
                batch = []
                while due and due[0][0] <= now and len(batch) < take:
                    batch.append(due.popleft()[1])
                await limiter.acquire()
                tg.start_soon(self._send_receipts, client, url, batch, limiter)

    async def _send_receipts(self, client: httpx.AsyncClient, url: str, ids: list[str], limiter: anyio.Semaphore) -> None:
        c = self._c
        try:
            if self.settings.profile == "twilio":
                state, code = self._receipt_state()
                form = {"MessageSid": ids[0], "MessageStatus": state, "ErrorCode": "" if code is None else str(code)}
                body, ctype = urlencode(form).encode(), "application/x-www-form-urlencoded"
            else:
                receipts = []
                for mid in ids:
                    state, code = self._receipt_state()
                    receipts.append({"id": mid, "status": state, "error_code": code})
                body, ctype = _encode({"receipts": receipts}), "application/json"
            c["receipts_sent"] += len(ids)
            ok = await self._post(client, url, body, ctype)
            c["receipts_acked" if ok else "receipts_failed"] += len(ids)
        finally:
            limiter.release()

    async def _post_inbound(self, client: httpx.AsyncClient) -> None:
        s = self.settings
        url = s.inbound_url
        assert url is not None
        n = 0
        while True:
            await anyio.sleep(1.0 / s.mo_rate)
            n += 1
            sender, text = f"+4479{n % 10**8:08d}", "STOP" if s.stop_every and n % s.stop_every == 0 else f"MO {n}"
            if s.profile == "twilio":
                form = {"MessageSid": f"SM{n:032x}", "From": sender, "To": "SLUICE", "Body": text, "NumMedia": "0",
                        "SmsStatus": "received"}  # fmt: skip
                body, ctype = urlencode(form).encode(), "application/x-www-form-urlencoded"
            else:
                body, ctype = _encode({"inbound": [{"from": sender, "to": "SLUICE", "text": text}]}), "application/json"
            self._c["mos_sent"] += 1
            if await self._post(client, url, body, ctype):
                self._c["mos_acked"] += 1


async def run_http_simulator(settings: HttpSimSettings, *, stats_file: str | None = None, out: Any = None) -> dict[str, Any]:
    """Serve until SIGINT/SIGTERM; print counters as JSON on SIGUSR1 and on exit."""
    return await serve_until_signalled(HttpCarrierSimulator(settings), settings.host, stats_file=stats_file, out=out)


@click.command("http")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8900, show_default=True, help="0 picks a free port (printed on start)")
@click.option("--profile", type=click.Choice(["generic", "twilio"]), default="generic", show_default=True)
@click.option("--tps", type=float, default=None, help="accepted messages/s (default: no limit); beyond: 429")
@click.option("--throttle-burst", default=None, help="EVERY:DURATION seconds of answering everything 429")
@click.option("--error-rate", default=0.0, show_default=True, help="fraction of requests answered 5xx")
@click.option("--error-when", type=click.Choice(["before", "after"]), default="after", show_default=True,
              help="5xx before taking the messages (503) or after (500: taken, but the answer says not)")
@click.option("--stall-rate", default=0.0, show_default=True, help="fraction of requests taken, then answered late")
@click.option("--stall-s", default=30.0, show_default=True, help="how late a stalled answer comes")
@click.option("--latency-ms", default=0.0, show_default=True, help="delay of every answer")
@click.option("--reject-prefix", default="+999", show_default=True, help="numbers refused with code 21211")
@click.option("--auth-token", default=None, help="require this token (default: any)")
@click.option("--account", default=None, help="twilio: require this account SID (default: any)")
@click.option("--receipt-url", default=None, help="POST signed receipts here")
@click.option("--receipt-secret", default=None, help="generic: HMAC key of receipts (twilio: --auth-token)")
@click.option("--receipt-delay", default=1.0, show_default=True, help="seconds from acceptance to receipt")
@click.option("--receipt-batch", default=500, show_default=True, help="generic: receipts per POST at most")
@click.option("--undeliv-rate", default=0.0, show_default=True, help="fraction of receipts undelivered")
@click.option("--inbound-url", default=None, help="POST inbound messages here")
@click.option("--mo-rate", default=0.0, show_default=True, help="inbound messages per second")
@click.option("--stop-every", default=0, show_default=True, help="every Nth inbound message says STOP (0: never)")
@click.option("--seed", type=int, default=None)
@click.option("--stats-file", type=click.Path(dir_okay=False), default=None, help="write counters JSON here on exit")
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio", show_default=True)
def sim_http(stats_file: str | None, backend: str, throttle_burst: str | None, **options: Any) -> None:
    """An HTTP SMS carrier: REST API with TPS limits (429), 5xx, stalls, idempotency keys, signed receipts."""
    settings = HttpSimSettings(throttle_burst=parse_burst(throttle_burst), **options)
    backend_options = {"use_uvloop": True} if backend == "asyncio" else {}
    anyio.run(lambda: run_http_simulator(settings, stats_file=stats_file), backend=backend, backend_options=backend_options)


if __name__ == "__main__":
    sim_http()
