"""``callback_states`` through the service: ``sluice serve`` (a child process) in front of the
SMPP simulator, webhooks POSTed to a receiver on loopback (``webhooks.allow_private``). A job
that chose the final states hears exactly one event per message, its final state, and nothing
else; a job that chose nothing hears every state (the same run, so the filter is what differs)."""

from __future__ import annotations

from collections import defaultdict

import anyio
import msgspec
import pytest

from gateway.testing import http_receiver
from gateway.testing.serving import FINAL, client, open_served, wait_final


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


pytestmark = pytest.mark.anyio

N = 30
FINALS = ["delivered", "undelivered", "expired", "rejected", "failed", "unknown", "canceled"]


def job(hook: str, first: int, **extra) -> dict:
    return {"from": "Shop", "category": "transactional", "template": "Hi {n}", "callback_url": hook, **extra,
            "recipients": [{"to": "+4479111%05d" % (first + i), "vars": {"n": str(i)}} for i in range(N)]}


async def test_a_job_hears_only_the_states_it_chose(tmp_path) -> None:
    heard: dict[str, list[tuple[str, str]]] = defaultdict(list)  # path -> [(message id, state)]

    def answer(request, body):
        for e in msgspec.json.decode(body)["events"]:
            heard[request.target.decode()].append((e["message_id"], e["state"]))
        return 200, [], b""

    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        async with open_served(tmp_path, "--dlr-delay", "0.01", "--undeliv-rate", "0.3") as (_, gw), \
                client(gw.url) as c:  # fmt: skip
            finals = await c.post("/v1/jobs", json=job(f"http://127.0.0.1:{port}/finals", 0, callback_states=FINALS))
            every = await c.post("/v1/jobs", json=job(f"http://127.0.0.1:{port}/every", 100))
            one = await c.post("/v1/messages", json={"to": "+447911100500", "body": "Code 1", "from": "Shop",
                                                     "category": "otp", "callback_url": f"http://127.0.0.1:{port}/one",
                                                     "callback_states": ["submitted"]})  # fmt: skip
            assert [r.status_code for r in (finals, every, one)] == [202] * 3, (finals.text, every.text, one.text)
            fid, eid = finals.json()["id"], every.json()["id"]
            await wait_final(c, fid, N)
            await wait_final(c, eid, N)
            with anyio.fail_after(30):  # the final events reach the receiver (bounded wait, no sleep-and-hope)
                while sum(s in FINAL for _, s in heard["/every"]) < N or len(heard["/finals"]) < N \
                        or not heard["/one"]:
                    await anyio.sleep(0.02)
            page = (await c.get(f"/v1/jobs/{fid}/messages", params={"limit": 100})).json()
            states = {m["id"]: m["state"] for m in page["messages"]}
        tg.cancel_scope.cancel()
    # Exactly once each, the final state the store has, nothing before it.
    assert sorted(heard["/finals"]) == sorted(states.items())
    assert {s for _, s in heard["/finals"]} <= set(FINALS) and "undelivered" in {s for _, s in heard["/finals"]}
    # The job that chose nothing heard the submissions as well: the filter, not the run, made the difference.
    assert sum(s == "submitted" for _, s in heard["/every"]) >= N
    assert heard["/one"] == [(one.json()["id"], "submitted")]  # a message's choice: its submission alone
