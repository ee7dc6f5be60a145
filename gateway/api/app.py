"""The HTTP API as a plain ASGI app: decode -> call the service -> encode. No framework.

Every error is a JSON body ``{"error", "code", "field"?, "index"?}`` (``schemas.ErrorBody``)
with a 4xx status: 400 for a body that is not JSON, 422 for JSON that breaks the schema (naming
the field); ``code`` is stable and machine-readable (the table in docs/API.md). A 500 means a
bug and is logged with its traceback, never with the request's secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel
import msgspec

from gateway.api import openapi, schemas
from gateway.config import Operator, Tenant
from gateway.core import segments
from gateway.core.bucket import TokenBucket
from gateway.core.targets import TargetPolicy, url_problem
from gateway.core.template import MissingVariable
from gateway.errors import CallerError, Conflict, InvalidInput, NotFound, SluiceError, StorageError
from gateway.api.json_pieces import Pieces, elements, recipient_pieces
from gateway.runtime.ingest import RecipientLines
from gateway.runtime.service import Gateway
from gateway.store.base import JOB_STATUSES, STATES

__all__ = ["Api", "hash_key"]

log = logging.getLogger(__name__)
_enc = msgspec.json.Encoder()
_decoders = {t: msgspec.json.Decoder(t) for t in (schemas.MessageIn, schemas.JobIn, schemas.SuppressionIn, schemas.PreviewIn)}
_JOB_HEAD = msgspec.json.Decoder(schemas.JobIn)
_RECIPIENT = msgspec.json.Decoder(schemas.RecipientIn)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Response(msgspec.Struct):
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = []
    # Run once the response has been sent (a streamed job's messages released for dispatch:
    # what the 202 needs is the commit, not this).
    after: Callable[[], Awaitable[None]] | None = None


Handler = Callable[..., Awaitable[Response]]
#: An HTTP carrier's callback: (URL as called, headers with lower-case names, body) -> HTTP status
#: (``HttpConnector.callback``: 204, 401 bad signature, 400 unreadable).
CarrierCallback = Callable[[str, Mapping[str, str], bytes], Awaitable[int]]
_CALLBACK = re.compile(r"^/v1/carriers/(?P<name>[^/]+)/(?:receipts|inbound)$")
_MAX_CALLBACK = 1024 * 1024
_INBOUND_KINDS = ("opt_out", "opt_in", "help", "message")
_FLAGS = {"0": False, "false": False, "1": True, "true": True}  # a yes/no query parameter's spellings


class Api:
    def __init__(self, gateway: Gateway, tenants: dict[str, Tenant], *, clock: Callable[[], float],
                 max_body: int = 64 * 1024 * 1024, body_timeout: float = 60.0,
                 extra: dict[str, Handler] | None = None,
                 callbacks: Mapping[str, CarrierCallback] | None = None,
                 targets: TargetPolicy | None = None, operators: dict[str, Operator] | None = None,
                 ) -> None:  # fmt: skip
        """``tenants`` maps the hex SHA-256 of each API key to its tenant: keys are never kept.
        ``body_timeout``: the most time spent waiting for one request's body, in all (408).
        ``targets``: where a ``callback_url`` may point (default: public addresses only).
        ``operators``: SHA-256 of each operator's key -> operator (``/metrics``, full ``/v1/carriers``)."""
        self._operators = operators or {}
        # Large jobs are admitted at a lower priority than every other request (``Traffic``).
        self._traffic = Traffic()
        if gateway.give_way is None:
            gateway.give_way = self._traffic.give_way
        self._targets = targets if targets is not None else TargetPolicy()
        self.gw = gateway
        self._tenants = tenants
        self._clock = clock
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._limits: dict[str, TokenBucket] = {}
        # GETs: /healthz, /readyz (open); /metrics (operators); /v1/carriers (operators: all of it,
        # tenants: a reduced view). Handlers of keyed paths take ``operator: bool``.
        self._extra = extra or {}
        self._callbacks = callbacks or {}  # HTTP carrier name -> its callback (signed, not by tenant key)
        # (method, path template, handler): the templates are the OpenAPI document's paths.
        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/messages", self._post_message),
            ("POST", "/v1/messages/batch", self._post_batch),
            ("POST", "/v1/preview", self._post_preview),
            ("GET", "/v1/messages/{mid}", self._get_message),
            ("GET", "/v1/jobs", self._get_jobs),
            ("POST", "/v1/jobs", self._post_job),
            ("GET", "/v1/jobs/{jid}", self._get_job),
            ("GET", "/v1/jobs/{jid}/messages", self._get_job_messages),
            *(("POST", f"/v1/jobs/{{jid}}/{a}", partial(self._control, action=a)) for a in ("cancel", "pause", "resume")),
            ("GET", "/v1/suppressions", self._get_suppressions),
            ("POST", "/v1/suppressions", self._post_suppression),
            ("DELETE", "/v1/suppressions/{number}", self._delete_suppression),
            ("GET", "/v1/inbound", self._get_inbound),
        ]  # fmt: skip
        self._routes = [(m, _pattern(t), h, "{" not in t) for m, t, h in routes]
        self._templates = [(m, t) for m, t, _ in routes]
        if missing := openapi.undocumented(self.routes()):  # a route is never served undocumented
            raise RuntimeError(f"routes missing from the OpenAPI document: {missing}")

    def routes(self) -> list[tuple[str, str]]:
        """(method, path template) of every route this app serves, its extras and carrier
        callbacks included: what the OpenAPI document must describe."""
        out = [("GET", "/openapi.json"), *self._templates, *(("GET", path) for path in self._extra)]
        if self._callbacks:
            out += [("POST", "/v1/carriers/{name}/receipts"), ("POST", "/v1/carriers/{name}/inbound")]
        return out

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._traffic.begin()
        try:
            resp = await self._dispatch(scope, receive)
        except CallerError as exc:
            resp = _error(exc.status, str(exc), exc.code, getattr(exc, "field", None), getattr(exc, "index", None),
                          rejected=getattr(exc, "rejected", None), rejected_count=getattr(exc, "rejected_count", None),
                          rejected_by_reason=getattr(exc, "rejected_by_reason", None))  # fmt: skip
            if isinstance(exc, _Unauthorized):  # RFC 9110 §11.6.1: a 401 names the scheme
                resp.headers.append((b"www-authenticate", b'Bearer realm="sluice"'))
            elif isinstance(exc, _TooMany):
                resp.headers.append((b"retry-after", str(exc.retry_after).encode()))
            elif isinstance(exc, (_TooSlow, _TooLarge)):  # the rest of the body is not read: close
                resp.headers.append((b"connection", b"close"))
        except StorageError as exc:
            log.warning("store.failed error=%s", exc)
            resp = _error(503, "storage unavailable, retry later", "storage_unavailable",
                          headers=[(b"retry-after", b"1")])  # fmt: skip
        except SluiceError as exc:
            resp = _error(400, str(exc), "bad_request")
        except Exception:
            log.exception("api.bug method=%s path=%s", scope.get("method"), scope.get("path"))
            resp = _error(500, "internal error", "internal_error")
        finally:
            self._traffic.end()
        headers = resp.headers
        if not any(k == b"content-type" for k, _ in headers):
            headers = [(b"content-type", b"application/json"), *headers]
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": resp.body})
        if resp.after is not None:
            try:
                await resp.after()
            except Exception:
                log.exception("api.after_response_failed method=%s path=%s", scope.get("method"), scope.get("path"))

    async def _dispatch(self, scope, receive) -> Response:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/openapi.json":
            return Response(200, openapi.document())
        if method != "GET" and (path in self._extra or path == "/openapi.json"):
            return _error(405, "method not allowed; use GET", "method_not_allowed", headers=[(b"allow", b"GET")])
        if method == "GET" and path in self._extra:
            if path in _OPEN:
                return await self._extra[path]()
            return await self._operational(scope, path)
        if (hit := _CALLBACK.match(path)) is not None:
            if method != "POST":
                return _error(405, "method not allowed; use POST", "method_not_allowed", headers=[(b"allow", b"POST")])
            return await self._carrier_callback(scope, _BodyBudget(receive, self._body_timeout), hit["name"])
        allowed = []
        hits = [(m, hit, handler, literal) for m, rx, handler, literal in self._routes if (hit := rx.match(path))]
        if any(literal for *_, literal in hits):  # /v1/messages/batch is not /v1/messages/{mid}
            hits = [h for h in hits if h[3]]
        for m, hit, handler, _ in hits:
            if m != method:
                allowed.append(m)
                continue
            tenant = self._authenticate(scope)
            self._rate_limit(tenant)
            receive = _BodyBudget(receive, self._body_timeout)
            if handler == self._post_job and _header(scope, b"content-type").startswith("application/x-ndjson"):
                return await self._post_job_stream(tenant, scope, receive)
            body = await _read_body(receive, self._max_body) if method in ("POST", "DELETE") else b""
            return await handler(tenant, scope, body, **hit.groupdict())
        if allowed:
            methods = ", ".join(sorted(set(allowed)))  # RFC 9110 §15.5.6: a 405 lists them in Allow
            return _error(405, f"method not allowed; use {methods}", "method_not_allowed",
                          headers=[(b"allow", methods.encode())])  # fmt: skip
        return _error(404, "no such endpoint", "no_such_endpoint")

    async def _operational(self, scope, path: str) -> Response:
        """/metrics and /v1/carriers: an operator's key sees everything; a tenant's key gets the
        reduced /v1/carriers (no other tenants' volumes) and 403 on /metrics."""
        if (operator := self._operators.get(hash_key(_token(scope)))) is not None:
            log.debug("api.operator name=%s path=%s", operator.name, path)
            return await self._extra[path](operator=True)
        tenant = self._authenticate(scope)
        self._rate_limit(tenant)
        if tenant.operator:  # a tenant's key marked as an operator's (api.tenants[].operator)
            return await self._extra[path](operator=True)
        if path not in _TENANT_VIEWS:
            raise _Forbidden(f"{path} needs an operator's key (api.operators)")
        return await self._extra[path](operator=False)

    def _authenticate(self, scope) -> Tenant:
        token = _token(scope)
        # A dict lookup of the key's SHA-256, not hmac.compare_digest over every tenant: its
        # timing can reveal at most how much of a digest matched, and a digest (preimage
        # resistant) tells nothing about the key that would match it; keys are long and random.
        tenant = self._tenants.get(hash_key(token))  # compares digests, never keys
        if tenant is None:
            raise _Unauthorized("unknown API key", code="unknown_key")
        return tenant

    def _rate_limit(self, tenant: Tenant) -> None:
        now = self._clock()
        bucket = self._limits.get(tenant.name)
        if bucket is None:
            bucket = self._limits[tenant.name] = TokenBucket(tenant.requests_per_second, tenant.burst, now)
        if not bucket.try_take(1, now):
            raise _TooMany(max(1, round(bucket.wait_time(1, now) + 0.5)))

    def _check_callback(self, body: schemas.MessageIn | schemas.JobIn) -> None:
        """The SSRF rule at submission (gateway/core/targets.py; again at connect time), and
        callback_states only with a callback_url to hear them."""
        url = body.callback_url
        if url is not None and (problem := url_problem(url, self._targets)) is not None:
            raise _UnsafeUrl(f"callback_url refused: {problem}", field="callback_url")
        if url is None and body.callback_states is not None:
            raise InvalidInput("callback_states needs a callback_url", field="callback_states")

    # -- handlers -----------------------------------------------------------------------

    async def _post_message(self, tenant: Tenant, scope, body: bytes) -> Response:
        msg = _decode(schemas.MessageIn, body)
        self._check_callback(msg)
        out, _ = await self.gw.submit_message(tenant.name, msg, self._clock(), raw=body,
                                              idempotency_key=_idem(scope))  # fmt: skip
        return Response(202, out)

    async def _post_batch(self, tenant: Tenant, scope, body: bytes) -> Response:
        """Up to ``schemas.MAX_BATCH`` messages, each with its own idempotency key, answered one by
        one in order (``schemas.BatchOut``): each goes through what ``POST /v1/messages`` does
        for it alone (``Gateway.submit_messages``). As in a job: a message that breaks the schema
        fails the whole batch (nothing stored), one that cannot be sent fails alone."""
        items = _batch_messages(_batch_items(body))
        results: list[schemas.BatchResult | None] = [None] * len(items)
        valid: list[tuple[int, tuple[schemas.MessageIn, bytes, str]]] = []
        for i, (key, msg, raw) in enumerate(items):
            try:
                self._check_callback(msg)
            except CallerError as exc:
                results[i] = _batch_error(i, exc, "message")
                continue
            valid.append((i, (msg, raw, key)))
        answers = await self.gw.submit_messages(tenant.name, [v for _, v in valid], self._clock()) if valid else []
        for (i, _), answer in zip(valid, answers):
            if isinstance(answer, bytes):
                try:
                    ok = _ACCEPTED.decode(answer)
                except msgspec.ValidationError:  # the key answers a job: another body, surely
                    answer = Conflict("idempotency key was used with another request body", code="idempotency_key_reused")
                else:
                    results[i] = schemas.BatchResult(index=i, status=202, id=ok.id, state=ok.state)
                    continue
            if isinstance(answer, CallerError):
                results[i] = _batch_error(i, answer, "message" if isinstance(answer, InvalidInput) else "")
            else:  # the store failed for this one message (the others of the transaction are kept)
                results[i] = schemas.BatchResult(index=i, status=503, code="storage_unavailable", error=str(answer))
        done = [r for r in results if r is not None]
        accepted = sum(r.status == 202 for r in done)
        return Response(200, _enc.encode(schemas.BatchOut(results=done, accepted=accepted, rejected=len(done) - accepted)))

    async def _post_preview(self, tenant: Tenant, scope, body: bytes) -> Response:
        """The gateway's own segment rules on a text (``Scheduler.segments_of``, what dispatch plans),
        so a campaign's preview and its send never disagree. Stores nothing."""
        req = _decode(schemas.PreviewIn, body)
        core = self.gw.core
        try:
            sent, count, encoding = core.planned(req.text, req.vars)
        except MissingVariable as exc:
            raise InvalidInput(str(exc), field=f"vars.{exc.name}", code="missing_variable") from None
        except ValueError as exc:  # over max_segments, or a NUL in a value
            raise InvalidInput(str(exc), field="text", code="too_long" if "segment" in str(exc) else "invalid_field") from None
        units = segments.plan(sent).units  # of the body dispatch sends (composed, smart encoding)
        prices = {c.name: (None if c.price_per_segment is None else c.price_per_segment * count)
                  for c in core.settings.carriers}  # fmt: skip
        out = schemas.PreviewOut(text=sent, encoding=encoding, segments=count, units=units, prices=prices)
        return Response(200, _enc.encode(out))

    async def _post_job(self, tenant: Tenant, scope, body: bytes) -> Response:
        if len(body) >= _PIECES_FROM and (pieces := await _cut(body, self._traffic.give_way)) is not None:
            return await self._post_job_pieces(tenant, scope, body, pieces)
        job = _decode(schemas.JobIn, body)
        self._check_callback(job)
        out, _ = await self.gw.submit_job(tenant.name, job, self._clock(), raw=body, idempotency_key=_idem(scope))
        return Response(202, out)

    async def _post_job_pieces(self, tenant: Tenant, scope, body: bytes, pieces: Pieces) -> Response:
        with self._traffic.bulk():
            return await self._admit_pieces(tenant, scope, body, pieces)

    async def _admit_pieces(self, tenant: Tenant, scope, body: bytes, pieces: Pieces) -> Response:
        """A large JSON job: admitted piece by piece as a streamed job is (the loop is never
        held for the whole body: gateway/api/json_pieces.py), all or nothing as well."""
        head = _decode(schemas.JobIn, pieces.head)
        if head.recipients:
            raise InvalidInput("recipients given twice", field="recipients")
        self._check_callback(head)
        idem = _idem(scope)
        digest = await anyio.to_thread.run_sync(_sha256, body) if idem else ""  # hashlib lets go of the GIL

        async def recipients():
            for span in pieces.spans:
                yield RecipientLines(elements(body, span), decode_elements)

        after: list[Callable[[], Awaitable[None]]] = []  # the release of its messages, after the 202
        out, _ = await self.gw.submit_job_stream(tenant.name, head, recipients(), self._clock(),
                                                 digest=lambda: digest, idempotency_key=idem, release=after.append)  # fmt: skip
        return Response(202, out, after=after[0] if after else None)

    async def _post_job_stream(self, tenant: Tenant, scope, receive) -> Response:
        with self._traffic.bulk():
            return await self._admit_stream(tenant, scope, receive)

    async def _admit_stream(self, tenant: Tenant, scope, receive) -> Response:
        """NDJSON: the job line, then one recipient per line, read and admitted in chunks."""
        idem = _idem(scope)
        body = NdjsonBody(receive, max_line=self._max_body, digest=idem is not None, chunk=_CHUNK)
        head = await body.head()
        self._check_callback(head)

        async def recipients():
            if head.recipients:  # the job line may carry some recipients itself
                yield head.recipients
            async for chunk in body.chunks():
                yield chunk

        after: list[Callable[[], Awaitable[None]]] = []  # the release of its messages, after the 202
        out, _ = await self.gw.submit_job_stream(tenant.name, head, recipients(), self._clock(),
                                                 digest=body.digest, idempotency_key=idem, release=after.append)  # fmt: skip
        return Response(202, out, after=after[0] if after else None)

    async def _get_job(self, tenant: Tenant, scope, body: bytes, jid: str) -> Response:
        return Response(200, _enc.encode(await self.gw.job_status(tenant.name, jid)))

    async def _get_jobs(self, tenant: Tenant, scope, body: bytes) -> Response:
        q = _query(scope)
        status = _one_of(q, "status", JOB_STATUSES)
        page = await self.gw.jobs(tenant.name, status, q.get("after", [None])[0], _limit(q))
        return Response(200, _enc.encode(page))

    async def _get_job_messages(self, tenant: Tenant, scope, body: bytes, jid: str) -> Response:
        q = _query(scope)
        limit = _limit(q)
        # ``state`` (a message's state) is the name; ``status`` the old one, still taken.
        state = _one_of(q, "state", STATES) or _one_of(q, "status", STATES)
        page = await self.gw.job_messages(tenant.name, jid, state, q.get("after", [None])[0], limit)
        return Response(200, _enc.encode(page))

    async def _control(self, tenant: Tenant, scope, body: bytes, jid: str, action: str) -> Response:
        return Response(200, _enc.encode(await self.gw.control_job(tenant.name, jid, action, self._clock())))

    async def _get_message(self, tenant: Tenant, scope, body: bytes, mid: str) -> Response:
        return Response(200, _enc.encode(await self.gw.message(tenant.name, mid)))

    async def _get_suppressions(self, tenant: Tenant, scope, body: bytes) -> Response:
        return Response(200, _enc.encode(await self.gw.suppressions(tenant.name)))

    async def _post_suppression(self, tenant: Tenant, scope, body: bytes) -> Response:
        s = _decode(schemas.SuppressionIn, body)
        number = await self.gw.suppress(tenant.name, s.number, self._clock())
        return Response(201, _enc.encode(schemas.SuppressionIn(number=number)))  # as kept: canonical

    async def _delete_suppression(self, tenant: Tenant, scope, body: bytes, number: str) -> Response:
        if not await self.gw.unsuppress(tenant.name, number):
            return _error(404, f"{number} is not on the suppression list", "not_found")
        return Response(200, b"{}")


    async def _get_inbound(self, tenant: Tenant, scope, body: bytes) -> Response:
        q = _query(scope)
        limit = _limit(q)
        raw_after = q.get("after", ["0"])[0]
        # int() takes "٣", "1_0" and " 7": an inbound id is ASCII digits only.
        if not (raw_after.isascii() and raw_after.isdigit() and len(raw_after) <= 19 and int(raw_after) < 2**63):
            raise InvalidInput("after must be an inbound id (0 .. 2^63-1)", field="after", code="invalid_cursor")
        after = int(raw_after)
        kind = q.get("kind", [None])[0]
        if kind is not None and kind not in _INBOUND_KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(_INBOUND_KINDS)}", field="kind")
        owner = tenant.name
        unrouted = q.get("unrouted", ["0"])[0]
        if unrouted not in _FLAGS:  # "banana" was taken as yes, "false" half-documented: one list, both ways
            raise InvalidInput(f"unrouted must be one of {', '.join(_FLAGS)}", field="unrouted")
        if _FLAGS[unrouted]:
            if not tenant.operator:
                raise NotFound("unrouted inbound messages are for operator keys only")
            owner = ""  # MOs to an address no tenant lists (gateway/runtime/inbound.py)
        page = await self.gw.inbound_page(owner, after, limit, kind)
        return Response(200, _enc.encode(page))

    async def _carrier_callback(self, scope, receive, name: str) -> Response:
        """A carrier's receipt or inbound post: no tenant key, the carrier's signature instead
        (checked by its connector before anything is read). Answered as soon as the events are
        handed on: the work happens in the dispatcher and the inbound pipeline."""
        callback = self._callbacks.get(name)
        if callback is None:
            return _error(404, f"no HTTP carrier {name!r}", "not_found")
        body = await _read_body(receive, _MAX_CALLBACK)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        status = await callback(_called_url(scope, headers), headers, body)
        if status < 300:
            return Response(status, b"")
        if status == 401:  # RFC 9110 §15.5.2: every 401 names a scheme (the carrier's signature)
            return _error(status, "bad signature", "bad_signature",
                          headers=[(b"www-authenticate", b'Signature realm="carrier-callback"')])  # fmt: skip
        return _error(status, "callback refused", "callback_refused")


def _called_url(scope, headers: Mapping[str, str]) -> str:
    """The URL as the carrier called it (Twilio signs it): scheme, Host, path and query."""
    host = headers.get("host")
    if not host and scope.get("server"):
        host = "%s:%d" % tuple(scope["server"])
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope.get("root_path", "") + scope["path"]
    return f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query}" if query else "")


class _Unauthorized(CallerError):
    status = 401
    code = "unauthorized"


class _Forbidden(CallerError):
    status = 403
    code = "operator_only"


_OPEN = frozenset({"/healthz", "/readyz"})  # for load balancers and orchestrators: no key
_TENANT_VIEWS = frozenset({"/v1/carriers"})  # keyed paths a tenant may read (a reduced view)


def _token(scope) -> str:
    """The request's bearer token (tenant or operator), or 401."""
    auths = [v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
    if len(auths) > 1:  # which one would count is ambiguous (a proxy may add one): neither
        raise _Unauthorized("more than one Authorization header", code="ambiguous_credentials")
    # RFC 9110 §11.1: the scheme is case-insensitive (Bearer, bearer, BEARER), then whitespace.
    scheme, _, token = (auths[0].decode("latin-1") if auths else "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _Unauthorized("missing bearer token", code="missing_credentials")
    return token


class _TooMany(CallerError):
    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after} s")
        self.retry_after = retry_after


class _UnsafeUrl(InvalidInput):
    """A callback_url the gateway must not call (loopback, private, its own ports...): 422."""

    code = "unsafe_url"


class _TooLarge(CallerError):
    status = 413
    code = "body_too_large"


class _TooSlow(CallerError):
    status = 408
    code = "body_timeout"


class _BodyBudget:
    """``receive`` for one request, whose waits for the client add up to ``timeout`` seconds at
    most: then 408. A slow client (slowloris) cannot hold a request open for ever, and the time
    the server itself spends (admitting an NDJSON job's chunks) is not charged to the client."""

    def __init__(self, receive, timeout: float) -> None:
        self._receive = receive
        self._timeout = timeout
        self._left = timeout

    async def __call__(self):
        started = anyio.current_time()
        with anyio.move_on_after(self._left):
            event = await self._receive()
            self._left -= anyio.current_time() - started
            return event
        raise _TooSlow(f"request body not received within {self._timeout:g} s")


class _Malformed(InvalidInput):
    """The body is not JSON at all (400); JSON of the wrong shape is InvalidInput (422)."""

    status = 400
    code = "malformed_json"


def _error(status: int, message: str, code: str, field: str | None = None, index: int | None = None,
           headers: list[tuple[bytes, bytes]] | None = None, rejected=None, rejected_count: int | None = None,
           rejected_by_reason: dict[str, int] | None = None) -> Response:  # fmt: skip
    # A message may quote the request (a path segment): lone surrogates cannot be JSON text.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = schemas.ErrorBody(error=message, code=code, field=field, index=index, rejected=rejected,
                             rejected_count=rejected_count, rejected_by_reason=rejected_by_reason)
    return Response(status, _enc.encode(body), headers or [])


def _pattern(template: str) -> re.Pattern[str]:
    """``/v1/jobs/{jid}`` -> a regex with one named group per ``{name}`` (one path segment)."""
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")


def _limit(q: dict[str, list[str]]) -> int:
    raw = q.get("limit", ["100"])[0]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= 1000):
        raise InvalidInput("limit must be a whole number 1..1000", field="limit")
    return int(raw)


def _one_of(q: dict[str, list[str]], name: str, allowed: tuple[str, ...]) -> str | None:
    value = q.get(name, [None])[0]
    if value is not None and value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}", field=name)
    return value


#: A UTF-8 byte order mark: files saved by Windows tools (Notepad, PowerShell 5's ``Out-File``,
#: Excel's "CSV UTF-8") begin with one. RFC 8259 §8.1 lets a parser ignore it; msgspec does not,
#: so a job file sent with ``curl --data-binary @job.ndjson`` was a 400 at byte 0. Not content: skipped
#: (the idempotency key's digest still covers the bytes as sent).
_BOM = b"\xef\xbb\xbf"


def _decode(kind: type, body: bytes):
    if body and body[0] == 0xEF:  # one index, not a slice: this runs per message
        body = body.removeprefix(_BOM)
    if not body:
        raise _Malformed("empty body: a JSON object is expected")
    try:
        return _decoders[kind].decode(body)
    except msgspec.ValidationError as exc:
        text, field = _split(str(exc))
        raise InvalidInput(text, field=field, index=_index(field)) from None
    except msgspec.DecodeError as exc:
        raise _Malformed(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise _Malformed("malformed JSON: nested too deeply") from None


_RECIPIENTS = msgspec.json.Decoder(list[schemas.RecipientIn])
_ACCEPTED = msgspec.json.Decoder(schemas.MessageAccepted)
_BATCH = msgspec.json.Decoder(list[msgspec.Raw])


class _BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    """``schemas.BatchItemIn`` with the message kept as its bytes: their SHA-256 is the key's
    digest, as the body's is for ``POST /v1/messages``."""

    idempotency_key: schemas.IdempotencyKey
    message: msgspec.Raw


_BATCH_ITEM = msgspec.json.Decoder(_BatchItem)
_MESSAGE = msgspec.json.Decoder(schemas.MessageIn)


class _BatchTooLarge(CallerError):
    status = 413
    code = "batch_too_large"


def _batch_items(body: bytes) -> list[msgspec.Raw]:
    """The batch's elements, not decoded yet (a bad one fails alone); the batch itself must be a
    JSON array of 1..MAX_BATCH elements."""
    body = body.removeprefix(_BOM)
    if not body:
        raise _Malformed("empty body: a JSON array of messages is expected")
    try:
        raws = _BATCH.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"a batch is a JSON array of messages: {exc}", field="messages") from None
    except msgspec.DecodeError as exc:
        raise _Malformed(f"malformed JSON: {exc}") from None
    except RecursionError:  # msgspec.Raw walks a nested element to find its end: [[[[... is a 400, not a 500
        raise _Malformed("malformed JSON: nested too deeply") from None
    if not raws:
        raise InvalidInput("the batch is empty: give 1 to %d messages" % schemas.MAX_BATCH, field="messages")
    if len(raws) > schemas.MAX_BATCH:
        raise _BatchTooLarge(f"{len(raws)} messages in one batch: at most {schemas.MAX_BATCH}")
    return raws


_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


def _batch_messages(raws: list[msgspec.Raw]) -> list[tuple[str, schemas.MessageIn, bytes]]:
    """Each item's (key, message, the message's bytes as sent); the first item that breaks the
    schema fails the batch, named (``messages[3].message.to``, ``index`` 3)."""
    out = []
    for i, raw in enumerate(raws):
        where = "item"
        try:
            item = _BATCH_ITEM.decode(raw)
            where, data = "message", bytes(item.message)
            out.append((item.idempotency_key, _MESSAGE.decode(data), data))
        except msgspec.ValidationError as exc:
            text, field = _split(str(exc))  # a missing or unknown field named too
            path = f"messages[{i}]" + (".message" if where == "message" else "") + (f".{field}" if field else "")
            raise InvalidInput(f"message {i}: {text}", field=path, index=i) from None
    return out


def _batch_error(i: int, exc: CallerError, within: str) -> schemas.BatchResult:
    """Message ``i``'s error; ``field`` says where in the item (``message.to``, ``idempotency_key``;
    a missing or unknown field is named too)."""
    field = getattr(exc, "field", None)
    if within:
        field = f"{within}.{field}" if field else within
    return schemas.BatchResult(index=i, status=exc.status, code=exc.code, error=str(exc), field=field)


class NdjsonBody:
    """A request body of NDJSON lines, read as it arrives: ``head()`` is the first line (the
    job), ``chunks()`` yields the recipients ``chunk`` lines at a time. Only one chunk and one
    partial line are held at once; ``max_line`` bounds a line. With ``digest``, the SHA-256 of
    every byte read is kept for the idempotency key (``digest()``, once the body has been read)."""

    def __init__(self, receive, *, max_line: int, chunk: int = 10_000, digest: bool = True) -> None:
        self._receive = receive
        self._max_line = max_line
        self._chunk = chunk
        self._sha = hashlib.sha256() if digest else None  # only an idempotency key needs it
        self._lines: list[bytes] = []  # complete lines not handed out yet
        self._partial = b""
        self._done = False
        self._at_start = True  # the body's first bytes not yet seen whole (a BOM may be split)

    def digest(self) -> str:
        if self._sha is None:
            raise RuntimeError("NdjsonBody(digest=False) keeps no digest")
        return self._sha.hexdigest()

    async def _fill(self) -> None:
        event = await self._receive()
        if event["type"] == "http.disconnect":
            raise InvalidInput("client went away")
        data = event.get("body", b"")
        if self._sha is not None:
            self._sha.update(data)
        if not event.get("more_body"):
            self._done = True
        data = self._partial + data
        if self._at_start and (len(data) >= 3 or self._done):  # a file's byte order mark (``_BOM``): not a line's
            self._at_start = False
            data = data.removeprefix(_BOM)
        cut = len(data) if self._done else data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if len(self._partial) > self._max_line:
            raise _TooLarge(f"an NDJSON line is larger than {self._max_line} bytes")
        if cut:
            end = cut - 1 if data[cut - 1 : cut] == b"\n" else cut  # no empty line after the last \n
            self._lines += data[:end].split(b"\n")

    async def head(self) -> schemas.JobIn:
        while True:
            while self._lines:
                line = self._lines.pop(0)
                if line.strip():
                    return _decode(schemas.JobIn, line)
            if self._done:
                raise InvalidInput("empty body: the first NDJSON line is the job")
            await self._fill()

    async def chunks(self):
        """``RecipientLines`` of at most ``chunk`` non-blank lines each, not decoded yet: the
        service decodes them where it checks them (a worker process, for a large job)."""
        while True:
            while len(self._lines) < self._chunk and not self._done:
                await self._fill()
            if not self._lines:
                return
            lines, self._lines = self._lines[: self._chunk], self._lines[self._chunk :]
            lines = list(filter(bytes.strip, lines))  # blank lines are allowed and skipped
            if lines:
                yield RecipientLines(lines, decode_lines)


#: Recipients admitted at a time from a large job (NDJSON lines, or a piece of a JSON array): the
#: event loop admits one chunk between other requests (1,000 recipients: ~5 ms on an idle core),
#: so a small request waits for one chunk at most, not for the job (`sluice bench fairness`).
_CHUNK = 1_000
_PIECES_FROM = 1 << 20  # a JSON job body this large is admitted in pieces (~1,000 recipients each)


async def _cut(body: bytes, give_way: Callable[[], Awaitable[None]]) -> Pieces | None:
    """``recipient_pieces``, giving way to other requests between pieces."""
    found = None
    for item in recipient_pieces(body, piece=64 * 1024):
        if item is None:
            await give_way()
        else:
            found = item
    return found


class Traffic:
    """How many requests are being served, large jobs left out, so that a large job's admission
    gives way to them: between two chunks it waits until none is in flight, for ``patience``
    seconds at most (so it always progresses, at one chunk per ``patience`` under a flood).
    Fair queueing of chunks alone is not enough: a small request takes several turns of the
    event loop (read, authenticate, a store write in a thread, answer), each one behind a chunk."""

    def __init__(self, patience: float = 0.005) -> None:
        self._patience = patience
        self._active = 0
        self._quiet: anyio.Event | None = None

    def begin(self) -> None:
        self._active += 1

    def end(self) -> None:
        self._active -= 1
        if self._active <= 0 and self._quiet is not None:
            self._quiet.set()
            self._quiet = None

    @contextlib.contextmanager
    def bulk(self):
        """This request is a large job's: it does not count as traffic to give way to."""
        self.end()
        try:
            yield
        finally:
            self.begin()

    async def give_way(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._active <= 0:
            return
        if self._quiet is None:
            self._quiet = anyio.Event()
        with anyio.move_on_after(self._patience):
            await self._quiet.wait()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_elements(items: list[bytes], first_index: int) -> list[schemas.RecipientIn]:
    """Elements of a JSON job's recipients array; a bad one raises ``InvalidInput`` naming it."""
    try:
        return _RECIPIENTS.decode(b"[" + b",".join(items) + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    people = []
    for k, item in enumerate(items):
        try:
            people.append(_RECIPIENT.decode(item))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            i = first_index + k
            text, field = _split(str(exc))
            raise InvalidInput(text, field=f"recipients[{i}]" + (f".{field}" if field else ""), index=i) from None
    return people


def decode_lines(lines: list[bytes], first_index: int) -> list[schemas.RecipientIn]:
    """NDJSON recipient lines (none blank); line k is the job's recipient ``first_index + k``.
    A bad line raises ``InvalidInput`` naming it (its line number in the body and its index)."""
    try:  # one call for the whole chunk; line by line only to say which line is wrong
        return _RECIPIENTS.decode(b"[" + b",".join(lines) + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    people = []
    for k, line in enumerate(lines):
        try:
            people.append(_RECIPIENT.decode(line))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            i = first_index + k
            text, field = _split(str(exc))
            kind = InvalidInput if isinstance(exc, msgspec.ValidationError) else _Malformed
            raise kind(f"line {i + 2}: {text}", field=f"recipients[{i}]" + (f".{field}" if field else ""),
                       index=i) from None  # fmt: skip
    return people


_AT = re.compile(r"^(.*?)(?: - at `\$\.?(.*)`)?$", re.S)
_IDX = re.compile(r"^recipients\[(\d+)\]")


def _split(text: str) -> tuple[str, str | None]:
    """msgspec's message -> (the message, the field path). A missing or unknown field is named in the
    message, not in msgspec's path (which stops at the object holding it): it is appended, so a job
    without ``from`` names ``from`` and a recipient without ``to`` names ``recipients[0].to``."""
    m = _AT.match(text)
    message, field = (m.group(1), m.group(2) or None) if m else (text, None)
    if (named := _NAMED.search(message)) is not None:
        field = f"{field}.{named.group(1)}" if field else named.group(1)
    return message, field


def _index(field: str | None) -> int | None:
    m = _IDX.match(field or "")
    return int(m.group(1)) if m else None


def _query(scope) -> dict[str, list[str]]:
    """The query string; an empty value (``after=``) is kept, so it is refused, not ignored."""
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def _header(scope, name: bytes) -> str:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""


def _idem(scope) -> str | None:
    key = _header(scope, b"idempotency-key").strip()
    if len(key) > 200:
        raise InvalidInput("Idempotency-Key is longer than 200 characters", field="Idempotency-Key")
    return key or None


async def _read_body(receive, limit: int) -> bytes:
    parts, size = [], 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise InvalidInput("client went away")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"body larger than {limit} bytes")
        parts.append(chunk)
        if not event.get("more_body"):
            return b"".join(parts)


async def _lifespan(receive, send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
