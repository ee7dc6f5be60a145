"""What every chapter of the shop's story gets: the two APIs with the shop's keys, the console, and
the two ways the outside world acts on the shop (a subscriber's SMS; a bounded wait for something to
become true). The interface is shared with other chapters' authors: keep these members as they are.

``Story.reply`` is the one place the story plays a carrier: the shop's short code is provisioned on
an HTTP carrier (the runner's config), and the MO is POSTed to the running gateway's
``/v1/carriers/{carrier}/inbound`` signed with that carrier's callback secret, exactly as the
carrier would. From there it flows as any MO does: gateway -> (keyword handling, suppression) ->
the campaigns webhook / inbound pull."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import msgspec
from rich.console import Console
from rich.table import Table

from carriers.http.profiles import generic

__all__ = ["Story", "StoryError"]

POLL = 0.1  # seconds between two looks at a condition in ``wait_for``


class StoryError(Exception):
    """The story could not show what it should: an API answered something unexpected, or a wait timed out."""


class Story:
    """One run of the shop's story (built by ``campaigns.story.runner``)."""

    def __init__(self, *, console: Console, campaigns: httpx.AsyncClient, gateway: httpx.AsyncClient, shop: str,
                 short_code: str, mo_carrier: str, mo_secret: str) -> None:  # fmt: skip
        self.console = console
        self.campaigns = campaigns
        self.gateway = gateway
        self.shop = shop
        self.short_code = short_code
        self.numbers: list[str] = []
        # Figures each chapter records under its own name (``facts["audience"]["imported"]``): the
        # runner prints nothing from here, it writes them as the run's JSON summary (``--json``).
        self.facts: dict[str, dict[str, Any]] = {}
        self._mo_carrier = mo_carrier
        self._mo_secret = mo_secret
        self._mo_seq = 0

    # ---- telling ---------------------------------------------------------------------------------
    def step(self, title: str) -> None:
        self.console.print(f"\n[bold cyan]▸ {title}[/]")

    def table(self, title: str, columns: list[str], rows: list[list[object]]) -> None:
        t = Table(title=title, title_justify="left")
        for i, col in enumerate(columns):
            t.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*(_cell(v) for v in row))
        self.console.print(t)

    def say(self, text: str) -> None:
        """One line of narration under the current step."""
        self.console.print(f"  {text}")

    # ---- acting ----------------------------------------------------------------------------------
    async def reply(self, from_number: str, text: str) -> None:
        """``from_number`` texts ``text`` to the shop's short code: the carrier's signed inbound POST."""
        self._mo_seq += 1
        msg = {"from": from_number, "to": self.short_code, "text": text,
               "id": f"story-mo-{time.time_ns()}-{self._mo_seq}"}  # fmt: skip
        body = msgspec.json.encode({"inbound": [msg]})
        path = f"/v1/carriers/{self._mo_carrier}/inbound"
        headers = {"content-type": "application/json",
                   **generic.sign(str(self.gateway.base_url.join(path)), body, self._mo_secret, time.time())}  # fmt: skip
        r = await self.gateway.post(path, content=body, headers=headers)
        if r.status_code >= 300:
            raise StoryError(f"the carrier's inbound POST for {from_number}: HTTP {r.status_code} {r.text[:200]}")

    async def wait_for(self, what: str, check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
        """Poll ``check`` every ``POLL`` s until it is true; StoryError naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() >= deadline:
                raise StoryError(f"timed out after {timeout:.0f} s waiting for {what}")
            await anyio.sleep(POLL)

    # ---- API helpers (errors become StoryError naming the call) -----------------------------------
    async def call(self, client: httpx.AsyncClient, method: str, path: str, *, expect: tuple[int, ...] = (200, 201, 202),
                   **kw: Any) -> Any:  # fmt: skip
        r = await client.request(method, path, **kw)
        if r.status_code not in expect:
            raise StoryError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        if not r.content:
            return None
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        """A call to the campaigns API with the shop's key."""
        return await self.call(self.campaigns, method, path, **kw)


def _cell(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
