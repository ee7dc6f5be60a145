"""The HTTP connector against the simulator in-process, over loopback, on both backends: what a
REST carrier says (batches, refusals, 5xx, time-outs, receipts, inbound) and what becomes of each
message."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from carriers.base import Inbound, ReceiptMatched, Requeue, SubmitFailed, Submitted
from carriers.http.profiles import generic
from carriers.http.settings import HttpSettings
from carriers.http.simulator import HttpSimSettings
from http_helpers import in_process, make_dispatch

pytestmark = pytest.mark.anyio


def settings(**kw) -> HttpSettings:
    kw.setdefault("name", "h1")
    kw.setdefault("tick_interval", 0.05)
    kw.setdefault("retry_backoff", 0.01)
    return HttpSettings(**kw)


def receipts(n: int):
    return lambda seen: sum(isinstance(e, ReceiptMatched) for e in seen) >= n


async def test_generic_batches_several_messages_per_request() -> None:
    sim = HttpSimSettings(receipt_delay=0.01, receipt_secret="s3cret", auth_token="tok")
    async with in_process(sim, settings(batch_size=100, concurrency=2)) as h:
        final = await h.drive([make_dispatch(i, message_id=500 + i) for i in range(250)])
        assert all(isinstance(e, Submitted) for e in final.values())
        counters = h.sim.counters()
        assert counters["requests"] == 3 and counters["accepted"] == 250  # 100 + 100 + 50
        await h.until(receipts(250))
        assert sorted(e.message_id for e in h.of(ReceiptMatched)) == list(range(500, 750))
        assert set(h.callback_statuses) == {204}  # every receipt POST was signed right
        assert h.connector.statistics().receipts_pending == 0


async def test_twilio_form_profile_round_trip() -> None:
    sim = HttpSimSettings(profile="twilio", auth_token="tok", account="AC1", receipt_delay=0.01, undeliv_rate=1.0)
    async with in_process(sim, settings(profile="twilio", account="AC1", concurrency=4)) as h:
        batch = [make_dispatch(i, f"msg {i}") for i in range(10)]
        batch.append(make_dispatch(10, recipient="+99911112222"))  # the simulator refuses +999...
        final = await h.drive(batch)
        assert h.sim.counters()["requests"] == 11  # one message per request
        refused = final.pop(10)
        assert isinstance(refused, SubmitFailed) and refused.permanent
        assert refused.command_status == 21211 and "not a valid phone number" in refused.name
        assert all(isinstance(e, Submitted) and e.carrier_ids[0].startswith("SM") for e in final.values())
        await h.until(receipts(10))
        assert {e.state for e in h.of(ReceiptMatched)} == {"undelivered"}
        assert {e.error_code for e in h.of(ReceiptMatched)} == {30003}
        assert set(h.callback_statuses) == {204}  # X-Twilio-Signature checked over URL + params


async def test_4xx_rejects_with_the_carriers_code() -> None:
    sim = HttpSimSettings(auth_token="right")
    async with in_process(sim, settings(), token="wrong") as h:
        final = await h.drive([make_dispatch(i) for i in range(3)])
        assert {(e.permanent, e.command_status, e.name) for e in final.values()} == {(True, 20003, "authenticate")}
    async with in_process(HttpSimSettings(), settings()) as h:  # one bad number in a batch: only it is refused
        final = await h.drive([make_dispatch(0), make_dispatch(1, recipient="+99900000001"), make_dispatch(2)])
        assert isinstance(final[1], SubmitFailed) and final[1].command_status == 21211 and final[1].permanent
        assert isinstance(final[0], Submitted) and isinstance(final[2], Submitted)
        assert h.connector.statistics().errors == {"invalid number": 1}


async def test_5xx_after_the_carrier_took_it_is_retried_with_the_same_key() -> None:
    sim = HttpSimSettings(error_rate=0.5, error_when="after", seed=7)
    async with in_process(sim, settings(batch_size=10, concurrency=4, max_attempts=4)) as h:
        final = await h.drive([make_dispatch(i) for i in range(200)])
        assert all(isinstance(e, Submitted) for e in final.values())
        assert not h.of(Requeue)  # retried inside the connector
        c = h.sim.counters()
        assert c["errors_5xx"] > 0 and c["duplicates_avoided"] == c["errors_5xx"]
        assert c["accepted"] == 200 and c["duplicates_accepted"] == 0  # exactly once at the carrier
        assert h.connector.statistics().errors["HTTP 500"] == c["errors_5xx"]


async def test_time_out_is_retried_with_the_same_key() -> None:
    # Every first try is taken and then answered too late; the retry, same key, gets the stored answer.
    sim = HttpSimSettings(stall_rate=1.0, stall_s=1.0)
    async with in_process(sim, settings(batch_size=10, concurrency=3, timeout=0.2)) as h:
        final = await h.drive([make_dispatch(i) for i in range(30)])
        assert all(isinstance(e, Submitted) for e in final.values())
        c = h.sim.counters()
        assert c["stalled"] == 3 and c["duplicates_avoided"] + c["conflicts"] >= 3
        assert c["accepted"] == 30 and c["duplicates_accepted"] == 0
        assert h.connector.statistics().errors["timeout"] == 3


async def test_gives_messages_back_after_max_attempts() -> None:
    sim = HttpSimSettings(error_rate=1.0, error_when="before")
    async with in_process(sim, settings(batch_size=5, max_attempts=3)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(5)])
        seen = await h.until(lambda s: sum(isinstance(e, Requeue) for e in s) == 5)
        assert [e.ref for e in seen if isinstance(e, Requeue)] == [0, 1, 2, 3, 4]
        assert {e.reason for e in seen if isinstance(e, Requeue)} == {"carrier_down"}
        assert h.sim.counters()["requests"] == 3
        assert h.connector.statistics().bound == 0  # reported as a link down


async def test_media_only_to_carriers_that_take_it() -> None:
    url = ("https://media.example/cat.png",)
    async with in_process(HttpSimSettings(), settings(media=False)) as h:
        final = await h.drive([make_dispatch(0, media=url), make_dispatch(1)])
        assert isinstance(final[0], SubmitFailed) and final[0].name == "MEDIA_UNSUPPORTED" and final[0].permanent
        assert isinstance(final[1], Submitted)
    async with in_process(HttpSimSettings(), settings(media=True)) as h:
        final = await h.drive([make_dispatch(0, media=url)])
        assert isinstance(final[0], Submitted)


async def test_inbound_replies_and_stop() -> None:
    sim = HttpSimSettings(mo_rate=200, stop_every=3, receipt_secret="k")
    async with in_process(sim, settings()) as h:
        await h.until(lambda s: sum(isinstance(e, Inbound) for e in s) >= 6)
        texts = [e.text for e in h.of(Inbound)][:6]
        assert texts == ["MO 1", "MO 2", "STOP", "MO 4", "MO 5", "STOP"]
        assert all(e.sender.startswith("+4479") and e.carrier == "h1" for e in h.of(Inbound))


async def test_callbacks_with_a_bad_signature_are_refused() -> None:
    async with in_process(HttpSimSettings(receipt_secret="k"), settings()) as h:
        body = b'{"receipts": [{"id": "1", "status": "delivered"}]}'
        assert await h.connector.callback("http://x/receipts", generic.sign("", body, "wrong", 0.0), body) == 401
        assert await h.connector.callback("http://x/receipts", {}, body) == 401
        import time

        good = generic.sign("", b"{oops", "k", time.time())
        assert await h.connector.callback("http://x/receipts", good, b"{oops") == 400


async def test_forged_and_replayed_callbacks_change_nothing() -> None:
    """Forged (wrong key, tampered body) or stale (older than ``signature_tolerance_s``): 401. A
    replay of a genuine callback within the tolerance is answered 204 and matches nothing the
    second time: receipts are idempotent, so replaying one cannot end a message twice."""
    import time

    async with in_process(HttpSimSettings(receipt_secret="k", receipt_delay=3600.0), settings()) as h:
        final = await h.drive([make_dispatch(1, message_id=501)])
        (cid,) = final[1].carrier_ids
        body = b'{"receipts": [{"id": "%s", "status": "delivered"}]}' % cid.encode()
        now = time.time()
        signed = generic.sign("", body, "k", now)
        callback = h.connector.callback
        assert await callback("http://x/receipts", generic.sign("", body, "wrong", now), body) == 401
        assert await callback("http://x/receipts", signed, body.replace(b"delivered", b"undelivered")) == 401
        assert await callback("http://x/receipts", generic.sign("", body, "k", now - 301), body) == 401
        assert await callback("http://x/receipts", signed, body) == 204
        assert await callback("http://x/receipts", signed, body) == 204  # the same, replayed
        while True:  # callback() has put its events in the stream before returning
            try:
                h.seen.append(h.events.receive_nowait())
            except anyio.WouldBlock:
                break
        assert [(e.message_id, e.state) for e in h.of(ReceiptMatched)] == [(501, "delivered")]


async def test_close_gives_back_what_was_not_sent() -> None:
    async with in_process(HttpSimSettings(latency_ms=300), settings(batch_size=10, concurrency=1)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(40)])
        with anyio.fail_after(5):
            while h.connector.statistics().in_flight == 0:
                await anyio.lowlevel.checkpoint()
        await h.connector.aclose()
        await h.until(lambda s: len(s) >= 40)
        submitted = [e.ref for e in h.seen if isinstance(e, Submitted)]
        closing = [e.ref for e in h.seen if isinstance(e, Requeue)]
        assert submitted == list(range(10))  # the request in flight finished
        assert closing == list(range(10, 40)) and {e.reason for e in h.of(Requeue)} == {"closing"}


async def test_deferred_callbacks_answer_once_written() -> None:
    """With ``deferred_acks`` a receipts callback is answered 204 only once ``acknowledge``
    says its states are written, 503 if that takes over ``callback_ack_timeout`` (the carrier
    posts it again; the repeat is a duplicate, answered at once)."""
    import time

    async with in_process(HttpSimSettings(receipt_secret="k", receipt_delay=3600.0),
                          settings(callback_ack_timeout=0.5), deferred_acks=True) as h:  # fmt: skip
        final = await h.drive([make_dispatch(1, message_id=601), make_dispatch(2, message_id=602)])
        bodies = [b'{"receipts": [{"id": "%s", "status": "delivered"}]}' % final[i].carrier_ids[0].encode()
                  for i in (1, 2)]  # fmt: skip
        answers: list[int] = []

        async def post(body: bytes) -> None:
            answers.append(await h.connector.callback("http://x/receipts", generic.sign("", body, "k", time.time()), body))

        async with anyio.create_task_group() as tg:
            tg.start_soon(post, bodies[0])
            event = await h.events.receive()
            assert isinstance(event, ReceiptMatched) and event.message_id == 601 and len(event.acks) == 1
            assert answers == []  # not written yet: no answer
            h.connector.acknowledge(event.acks)
        assert answers == [204]
        await post(bodies[1])  # nobody acknowledges: 503 after the time-out
        assert answers == [204, 503]
        await post(bodies[1])  # posted again: a duplicate, nothing to wait for
        assert answers == [204, 503, 204]


@pytest.mark.parametrize(("profile", "status"), [("generic", "sent"), ("generic", "accepted"),
                                                 ("twilio", "sending"), ("twilio", "accepted")])  # fmt: skip
async def test_intermediate_callbacks_make_the_message_accepted_then_final(profile: str, status: str) -> None:
    """An HTTP carrier's "sent"/"queued"/"accepted": ``ReceiptProgress`` once, then the final
    receipt still ends the message, with the carrier's error code; a late intermediate after it
    changes nothing."""
    from urllib.parse import urlencode

    from carriers.base import ReceiptProgress
    from carriers.http.profiles import twilio

    kw = {"profile": "twilio", "account": "AC1", "auth_token": "k"} if profile == "twilio" else {"receipt_secret": "k"}
    conn = settings(profile="twilio", account="AC1") if profile == "twilio" else settings()
    async with in_process(HttpSimSettings(receipt_delay=3600.0, **kw), conn, callback_secret="k") as h:
        final = await h.drive([make_dispatch(1, message_id=701)])
        (cid,) = final[1].carrier_ids

        def body(state: str, code: int | None) -> tuple[dict, bytes]:
            if profile == "twilio":
                form = {"MessageSid": cid, "MessageStatus": state, **({"ErrorCode": str(code)} if code else {})}
                raw = urlencode(form).encode()
                return twilio.sign("http://x/receipts", raw, "k", 0), raw
            raw = b'{"receipts": [{"id": "%s", "status": "%s", "error_code": %s}]}' % (
                cid.encode(), state.encode(), b"null" if code is None else b"%d" % code)
            return generic.sign("", raw, "k", __import__("time").time()), raw

        for state, code in ((status, None), (status, None), ("undelivered", 30003), (status, None)):
            headers, raw = body(state, code)
            assert await h.connector.callback("http://x/receipts", headers, raw) == 204
        while True:
            try:
                h.seen.append(h.events.receive_nowait())
            except anyio.WouldBlock:
                break
        said = [(type(e).__name__, e.message_id, str(e.state), e.error_code) for e in h.seen
                if isinstance(e, (ReceiptMatched, ReceiptProgress))]  # fmt: skip
        assert said == [("ReceiptProgress", 701, "accepted", None), ("ReceiptMatched", 701, "undelivered", 30003)]
        counts = h.connector.statistics().receipts
        assert (counts.intermediate, counts.matched, counts.duplicate) == (2, 1, 1)
