"""The shop story's parts that the run itself cannot check at every hour: the zone it picks is in
daytime whenever it runs, its config is valid and priced, a subscriber's SMS is the carrier's signed
POST, and a wait names what it waited for when it gives up."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from campaigns.host import split_config
from campaigns.story.context import Story, StoryError
from campaigns.story.runner import CHAPTERS, PRICES, daytime_zone, select, story_config
from carriers.http.profiles import generic

pytestmark = pytest.mark.anyio


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1.5e9, max_value=2.5e9))
def test_the_story_always_finds_a_zone_in_daytime(now: float) -> None:
    zone = daytime_zone(now)
    assert 10 <= dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(zone)).hour < 17


def test_the_story_config_hosts_both_layers_with_priced_carriers(tmp_path: Path) -> None:
    gw, settings_ = split_config(story_config(tmp_path, sim_ports=(2775, 2776), campaigns_port=8091, zone="Asia/Tokyo"))
    assert settings_ is not None and settings_.public_url == "http://127.0.0.1:8091"
    [shop] = settings_.tenants
    assert (shop.time_zone, shop.click_min_delay_s, shop.signup.sender) == ("Asia/Tokyo", 1.0, "73100")
    prices = {c.name: c.price_per_segment for c in gw.core.carriers}  # type: ignore[attr-defined]
    assert {k: prices[k] for k in PRICES} == PRICES
    assert str(tmp_path) in gw.store.url  # type: ignore[attr-defined]


async def test_a_reply_is_the_carriers_signed_inbound_post() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(base_url="http://gw.test", transport=httpx.MockTransport(handler)) as gw:
        story = Story(console=Console(quiet=True), campaigns=gw, gateway=gw, shop="shop", short_code="73100",
                      mo_carrier="shortcode", mo_secret="s3cret")  # fmt: skip
        await story.reply("+447911100001", "JOIN")
        await story.reply("+447911100001", "JOIN")
    first, second = seen
    assert first.url.path == "/v1/carriers/shortcode/inbound"
    [msg] = json.loads(first.content)["inbound"]
    assert (msg["from"], msg["to"], msg["text"]) == ("+447911100001", "73100", "JOIN")
    assert msg["id"] != json.loads(second.content)["inbound"][0]["id"]  # two texts, not one redelivered
    now = int(first.headers[generic.SIGNATURE_HEADER].split(",")[0][2:])
    assert generic.verify("", first.headers, first.content, "s3cret", now)
    assert not generic.verify("", first.headers, first.content, "other", now)


async def test_a_refused_reply_and_a_wait_that_gives_up_name_what_failed() -> None:
    async with httpx.AsyncClient(base_url="http://gw.test",
                                 transport=httpx.MockTransport(lambda r: httpx.Response(401, text="bad signature"))) as gw:  # fmt: skip
        story = Story(console=Console(quiet=True), campaigns=gw, gateway=gw, shop="shop", short_code="73100",
                      mo_carrier="shortcode", mo_secret="s")  # fmt: skip
        with pytest.raises(StoryError, match="HTTP 401 bad signature"):
            await story.reply("+447911100001", "Y")

        async def never() -> bool:
            return False

        with pytest.raises(StoryError, match="waiting for the moon"):
            await story.wait_for("the moon", never, timeout=0.05)


def test_chapters_are_chosen_by_name_in_the_storys_order() -> None:
    from click.testing import CliRunner

    from campaigns.cli import main

    names = [n for n, _ in CHAPTERS]
    assert [n for n, _ in select(None)] == names
    assert [n for n, _ in select(f" {names[-1]},{names[0]} ")] == [names[0], names[-1]]
    with pytest.raises(StoryError, match="no chapter nope"):
        select("audience,nope")
    r = CliRunner().invoke(main, ["demo", "--part", "shop", "--story-chapters", "audience,nope"])  # nothing started
    assert r.exit_code == 1 and "no chapter nope" in r.output
