"""Where a redirect finds its link: in memory (delivered messages, least recently used evicted), else
on the link reader's connection: on the loop when it never waits (SQLite), else in rounds (every code
missed while a read is in flight read together, one query): each waiter gets its own link, an error
reaches every waiter of its round and nothing else, and the listener answers as the API's route does."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import httpx
import pytest

from campaigns.errors import StorageError
from campaigns.service.launch import Launcher
from campaigns.service.short_http import ShortLinkServer, serve_short_links
from campaigns.service.tracking import Tracker
from campaigns.store import open_store
from campaigns.store.campaign_rows import LinkRow
from test_redirect_front import one_launched_link

pytestmark = pytest.mark.anyio
T0 = 1_767_000_000.0
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"
KEY = "acme-campaigns-key-0123456789"


class SlowReader:
    """A reader that must be called off the loop (as PostgreSQL's), counting its rounds."""

    on_loop = False

    def __init__(self, links: dict[str, LinkRow], fail_first: bool = False) -> None:
        self.links, self.calls, self.fail_first = links, [], fail_first
        self.gate = anyio.Event()

    def read(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        self.calls.append(sorted(codes))
        anyio.from_thread.run(self.gate.wait)  # the first round stays in flight until the test opens it
        if self.fail_first and len(self.calls) == 1:
            raise StorageError("connection lost")
        return {c: self.links[c] for c in codes if c in self.links}

    def close(self) -> None:
        pass


def _links(n: int, delivered: bool = True) -> dict[str, LinkRow]:
    return {f"Code{i:04d}": LinkRow(code=f"Code{i:04d}", tenant="acme", campaign_id=1, subscriber_id=i,
                                    target=f"https://x.example/{i}", created_at=T0, phone=f"+44791110{i:04d}",
                                    delivered_at=T0 if delivered else None) for i in range(n)}  # fmt: skip


@pytest.mark.parametrize("fail_first", [False, True])
async def test_misses_are_read_in_rounds(tmp_path, fail_first: bool) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    la = Launcher(store, {}, {}, lambda: T0 + 100)
    tracker = Tracker(la, link_cache=8)
    reader = SlowReader(_links(30), fail_first=fail_first)
    tracker._reader = reader
    results: dict[str, object] = {}

    async def one(code: str) -> None:
        try:
            hit = await tracker.redirect(code, method="GET", user_agent=UA)
            results[code] = hit.location if hit is not None else None
        except StorageError as exc:
            results[code] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "Code0000")
        while not reader.calls:  # the first round is in flight (its thread waits on the gate)
            await anyio.sleep(0.001)
        for i in range(1, 21):  # these miss while it is: they wait for the next round, together
            tg.start_soon(one, f"Code{i:04d}")
        tg.start_soon(one, "Missing1")
        for _ in range(50):
            await anyio.sleep(0)
        reader.gate.set()
    assert len(reader.calls) == 2 and reader.calls[0] == ["Code0000"]
    assert reader.calls[1] == sorted([f"Code{i:04d}" for i in range(1, 21)] + ["Missing1"])
    if fail_first:
        assert isinstance(results.pop("Code0000"), StorageError)
    else:
        assert results.pop("Code0000").startswith("https://x.example/0?")  # type: ignore[union-attr]
    assert results.pop("Missing1") is None
    assert all(loc.startswith(f"https://x.example/{int(c[4:])}?") for c, loc in results.items())  # type: ignore[union-attr]
    # delivered links are kept, at most link_cache of them, the least recently used evicted first
    assert len(tracker._links) == 8
    calls = len(reader.calls)
    kept = list(tracker._links)
    await tracker.redirect(kept[0], method="GET", user_agent=UA)  # now the most recent
    assert len(reader.calls) == calls and list(tracker._links)[-1] == kept[0]
    await tracker.redirect("Code0025", method="GET", user_agent=UA)  # a miss: evicts kept[1], not kept[0]
    assert kept[0] in tracker._links and kept[1] not in tracker._links
    store.close()


async def test_an_undelivered_link_is_read_again_until_delivered(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    la = Launcher(store, {}, {}, lambda: T0 + 100)
    tracker = Tracker(la)
    links = _links(1, delivered=False)
    reader = SlowReader(links)
    reader.gate.set()
    tracker._reader = reader
    assert (await tracker.redirect("Code0000", method="GET", user_agent=UA)).verdict == "click"  # type: ignore[union-attr]
    assert (await tracker.redirect("Code0000", method="GET", user_agent=UA)) is not None and len(reader.calls) == 2
    links["Code0000"] = LinkRow(**{**{f: getattr(links["Code0000"], f) for f in LinkRow.__struct_fields__},
                                   "delivered_at": T0 + 95})  # fmt: skip
    assert (await tracker.redirect("Code0000", method="GET", user_agent=UA)).verdict == "too_soon"  # type: ignore[union-attr]
    await tracker.redirect("Code0000", method="GET", user_agent=UA)
    assert len(reader.calls) == 3  # delivered: kept from then on
    store.close()


async def test_listener_answers_as_the_api_route(tmp_path) -> None:
    store, tracker, app, campaign_id, code = await one_launched_link(tmp_path)
    ready, port = anyio.Event(), []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_short_links(ShortLinkServer(tracker), host="127.0.0.1", port=0,
                                                on_ready=lambda p: (port.append(p), ready.set())))  # fmt: skip
        await ready.wait()
        hdr = {"user-agent": UA}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port[0]}") as short, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as api:  # fmt: skip
            for path in (f"/{code}", f"/l/{code}", "/ZZZZZZZZ", "/l/ZZZZZZZZ"):
                a, b = await short.get(path, headers=hdr), await api.get(path, headers=hdr)
                assert (a.status_code, a.headers.get("location"), a.headers["cache-control"]) == \
                    (b.status_code, b.headers.get("location"), b.headers["cache-control"])  # fmt: skip
                assert a.json() == b.json() if a.status_code == 404 else a.content == b""  # (the route's 302 says "null")
            assert (await short.head(f"/{code}", headers=hdr)).status_code == 302
            assert (await short.get(f"/{code}", headers={"user-agent": "Slackbot-LinkExpanding 1.0"})).status_code == 302
            counts = (await api.get(f"/v1/campaigns/{campaign_id}/clicks", headers={"authorization": f"Bearer {KEY}"})).json()
        assert counts == {"unique": 1, "total": 4, "ignored": 2}
        tg.cancel_scope.cancel()
    tracker.close()
    store.close()


async def test_the_listener_answers_waiting_requests_in_order_without_a_task_each(tmp_path) -> None:
    """Off-loop reads (PostgreSQL's): a request whose link must be read waits as a callback of the
    next round (no task, no event per request); the connection's later requests wait behind it and
    are answered in order; a failed round answers its waiters 503 and the connection serves on."""
    from test_short_http import _read_response, _req, _serving

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    la = Launcher(store, {}, {}, lambda: T0 + 100)
    tracker = Tracker(la)
    reader = SlowReader(_links(30), fail_first=True)
    tracker._reader = reader
    server = ShortLinkServer(tracker)
    spawned: list[object] = []
    server.spawn = spawned.append  # type: ignore[method-assign]  # the task fallback: must not be taken
    ua = UA.encode()
    async with anyio.create_task_group() as tg:
        port = await _serving(tg, server)
        conns = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
        await conns[0].send(_req("GET", "/Code0000", ua))
        while not reader.calls:  # the first round is in flight (its thread waits on the gate)
            await anyio.sleep(0.001)
        await conns[0].send(_req("GET", "/Code0005", ua))  # behind Code0000 on its connection
        await conns[1].send(_req("GET", "/Code0001", ua) + _req("GET", "/Missing1", ua) + _req("HEAD", "/Code0002", ua)
                            + _req("GET", "/Code0001", ua))  # fmt: skip
        await conns[2].send(_req("GET", "/Code0003", ua) + _req("GET", "/Code0004", ua, close=True))
        for _ in range(50):
            await anyio.sleep(0)
        reader.gate.set()
        with anyio.fail_after(10):  # (the task fallback is a no-op here: it would never answer)
            got = [[await _read_response(c) for _ in range(k)] for c, k in zip(conns, (2, 4, 2), strict=True)]
        for c in conns:
            await c.aclose()
        tg.cancel_scope.cancel()
    loc = lambda i: f"https://x.example/{i}?utm_source=sms&utm_medium=sms&utm_campaign=campaign-1"  # noqa: E731
    assert [(s, h.get("location")) for s, h, _ in got[0]] == [(503, None), (302, loc(5))]
    assert [(s, h.get("location")) for s, h, _ in got[1]] == [(302, loc(1)), (404, None), (302, loc(2)), (302, loc(1))]
    assert [(s, h.get("location"), h.get("connection")) for s, h, _ in got[2]] == [(302, loc(3), None), (302, loc(4), "close")]
    assert spawned == [] and reader.calls[0] == ["Code0000"]
    assert max(len(c) for c in reader.calls) > 1 and len(reader.calls) < 7  # misses read together
    assert sum(1 for c in reader.calls for code in c if code == "Code0001") == 1  # then from memory
    assert sorted(h[0] for h in tracker._hits) == ["Code0001", "Code0001", "Code0002", "Code0003", "Code0004", "Code0005"]
    tracker.close()
    store.close()


class OnLoopReader(SlowReader):
    on_loop = True

    def read(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        self.calls.append(sorted(codes))
        return {c: self.links[c] for c in codes if c in self.links}


async def test_a_kept_link_answers_as_a_fresh_read(tmp_path) -> None:
    """The hot path keeps a link as a tuple with its Location built once per (campaign, URL), and
    classifies from it: every answer equals ``with_utm`` of the link's target and ``classify_hit`` of
    the link, whatever was kept, evicted or rebuilt (caches far smaller than the links)."""
    from campaigns.core.links import Hit, classify_hit, with_utm

    targets = ["https://x.example/a", "https://x.example/b?utm_source=shop&q=1", "https://x.example/c#top",
               "https://y.example/", "https://x.example/a?k=%20v"]  # fmt: skip
    delivered = [T0, T0 + 95, None]  # a click, too soon (now is T0 + 100), unknown
    links = {f"Code{i:04d}": LinkRow(code=f"Code{i:04d}", tenant="acme", campaign_id=1 + i % 2, subscriber_id=i,
                                     target=targets[i % 5], created_at=T0, phone=f"+44791110{i:04d}",
                                     delivered_at=delivered[i % 3]) for i in range(40)}  # fmt: skip
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    la = Launcher(store, {}, {}, lambda: T0 + 100)
    tracker = Tracker(la, link_cache=5, location_cache=3)
    tracker._reader = OnLoopReader(links)
    asks = [(code, method, ua) for code in links for method, ua in (("GET", UA), ("HEAD", UA), ("GET", "Slackbot 1.0"), ("GET", None))]
    for _ in range(2):
        for code, method, ua in asks:
            link = links[code]
            hit = await tracker.redirect(code, method=method, user_agent=ua)
            utm = {"utm_source": "sms", "utm_medium": "sms", "utm_campaign": f"campaign-{link.campaign_id}"}
            assert hit is not None and hit.location == with_utm(link.target, utm)
            assert hit.verdict == classify_hit(Hit(code=code, method=method, user_agent=ua, at=T0 + 100), link.delivered_at)
    assert len(tracker._links) <= 5 and len(tracker._locations) <= 3
    assert len(tracker._hits) == 2 * len(asks)
    store.close()
