"""The story's inbox chapter (campaigns/story/inbox.py) against the campaign layer in process: the
chapter's own code, with a harness ``Story`` whose ``reply`` is the gateway's signed inbound webhook
and whose ``wait_for`` lets the link's round run (``Inbox.settle``) between two looks, on the fake
gateway (tests/campaigns/fake_gateway.py). The full story over a real ``sluice serve`` is the
``story`` package's runner (``make run``)."""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Awaitable, Callable

import httpx
import pytest
from rich.console import Console

from tests.campaigns.test_inbox import ACME, P, Router, World

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


class StoryError(Exception):
    pass


def _chapter():  # type: ignore[no-untyped-def]
    """The chapter module; where the ``story`` package's context is not there (this branch alone),
    a stand-in with the interface's two names (campaigns/story/context.py: ``Story``, ``StoryError``)."""
    try:
        import campaigns.story.context  # noqa: F401
    except ImportError:
        stub = types.ModuleType("campaigns.story.context")
        stub.Story = object  # type: ignore[attr-defined]
        stub.StoryError = StoryError  # type: ignore[attr-defined]
        sys.modules["campaigns.story.context"] = stub
    from campaigns.story import inbox

    return inbox


class HarnessStory:
    def __init__(self, world: World, numbers: list[str]) -> None:
        self.w = world
        self.out = io.StringIO()
        self.console = Console(file=self.out, width=140)
        self.campaigns = httpx.AsyncClient(transport=httpx.ASGITransport(app=world.app), base_url="http://t", headers=ACME)
        self.gateway = httpx.AsyncClient(transport=world.gw.transport(), base_url="http://gw")
        self.shop, self.short_code, self.numbers = "acme", "12345", numbers
        self.facts: dict[str, dict] = {}

    def step(self, title: str) -> None:
        self.console.print(f"▸ {title}")

    def table(self, title: str, columns: list[str], rows: list[list[object]]) -> None:
        self.console.print(title, columns, rows)

    async def reply(self, from_number: str, text: str) -> None:
        r = await self.w.webhook(self.w.mo(from_number, text))
        assert r.status_code == 204, r.text

    async def wait_for(self, what: str, check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
        for _ in range(20):  # bounded: each look follows one round of the link (virtual time)
            if await check():
                return
            await self.w.inbox.settle("acme")
            self.w.clock.now += 0.2
        raise StoryError(f"timed out waiting for {what}")


async def test_the_inbox_chapter_tells_a_question_answered_once_and_delivered() -> None:
    w = World()
    numbers = [*P, "+447911123404", "+447911123405"]
    for n in numbers:
        w.subscribe("acme", n)
    w.gw.deliver_on_read = True
    # A flow run waits for the first candidate's reply (the last imported number): the chapter asks someone else.
    w.inbox.state.reply_router = router = Router(takes={_chapter().QUESTION})
    router.offer_reply_orig = router.offer_reply  # type: ignore[attr-defined]

    async def only_first(tenant: str, sid: int, mid: str, text: str, now: float) -> bool:
        took = await router.offer_reply_orig(tenant, sid, mid, text, now)  # type: ignore[attr-defined]
        return took and len(router.offers) == 1

    router.offer_reply = only_first  # type: ignore[method-assign]
    story = HarnessStory(w, numbers)
    await _chapter().chapter(story)  # type: ignore[arg-type]
    [(gid, sent)] = w.gw.messages.items()  # one answer reached the gateway, once, as a transactional reply
    assert sent["request"]["category"] == "transactional" and sent["request"]["from"] == "12345"
    assert sent["request"]["to"] == P[1] and w.gw.messages[gid]["state"] == "delivered"
    facts = story.facts["inbox"]
    assert facts["answer_state"] == "delivered" and facts["answered"] == 1 and facts["needs_reply"] == 0
    figures = (await story.campaigns.get("/v1/inbox/figures")).json()
    assert (figures["open"], figures["closed"]) == (1, 1)
    assert "Response-time figures" in story.out.getvalue()
