"""``DeliveryProcess``'s reading of the delivery process's counters (stdout, one ``WebhookStats``
JSON line each) on the event loop: lines split across reads, several in one read, a bad line,
end of file. The seam is the pipe itself: what the process writes is what the server reads."""

from __future__ import annotations

import os

import anyio
import msgspec
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gateway.runtime.webhook_process import DeliveryProcess, Start
from gateway.runtime.webhooks import WebhookStats
from gateway.webhook_settings import WebhookSettings




def _process() -> DeliveryProcess:
    return DeliveryProcess(Start(store_path="x.db", settings=WebhookSettings(), secrets={}, own=[]))


def _line(n: int) -> bytes:
    return msgspec.json.encode(WebhookStats(requests=n, delivered=2 * n, retried=n % 3, dead=n % 2)) + b"\n"


async def _feed(chunks: list[bytes], check) -> DeliveryProcess:
    """Write ``chunks`` into a pipe one by one, calling ``check(i)`` once the reader has taken
    chunk i (bounded wait on a condition), then close it: the reader must return."""
    p = _process()
    r, w = os.pipe()
    try:
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def read() -> None:
                await p._read_stats(r)
                done.set()

            tg.start_soon(read)
            for i, chunk in enumerate(chunks):
                os.write(w, chunk)
                with anyio.fail_after(5):
                    while not check(p, i):
                        await anyio.sleep(0.001)
            os.close(w)
            w = -1
            with anyio.fail_after(5):
                await done.wait()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return p


@pytest.mark.anyio
async def test_the_last_whole_line_counts_and_a_split_line_waits_for_its_end() -> None:
    whole = _line(7)
    cut = len(whole) // 2
    chunks = [_line(1), _line(2) + _line(3), whole[:cut], whole[cut:], b"not json\n", _line(9)[:5]]
    want = [1, 3, 3, 7, 7, 7]  # a bad line and a line without its end leave the last good one

    p = await _feed(chunks, lambda p, i: p.statistics().requests == want[i])
    assert p.statistics() == WebhookStats(requests=7, delivered=14, retried=1, dead=1)


@hsettings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(0, 10**9), min_size=1, max_size=20), data=st.data())
def test_any_split_of_the_stream_ends_on_its_last_line(counts: list[int], data: st.DataObject) -> None:
    stream = b"".join(_line(n) for n in counts)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]

    async def main() -> DeliveryProcess:
        return await _feed(chunks, lambda p, i: i < len(chunks) - 1 or p.statistics().requests == counts[-1])

    p = anyio.run(main)
    assert p.statistics().requests == counts[-1]


# -- pokes: at most one every ``webhooks.linger`` ------------------------------------------------


class _Pipe:
    """What ``DeliveryProcess`` writes its pokes to: the write end of a real pipe."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.stdin = self
        self.pid = 0

    def fileno(self) -> int:
        return self.w

    def taken(self) -> int:
        try:
            return len(os.read(self.r, 1 << 16))
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def _run_virtually(*args):
    """``_poked(*args)`` on trio's virtual clock (``anyio.current_time()`` is the clock it keeps)."""
    import trio.testing

    return anyio.run(_poked, *args, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})


async def _poked(linger: float, pokes: int, every: float) -> tuple[DeliveryProcess, list[int], list[float]]:
    """``pokes`` pokes ``every`` seconds apart (virtual time), as ``record`` makes them after its
    writes; then ``linger`` and a little more. Returns the process, the bytes in the pipe right
    after each poke, and when each poke was made."""
    p = DeliveryProcess(Start(store_path="x.db", settings=WebhookSettings(linger=linger), secrets={}, own=[]))
    pipe = _Pipe()
    p._proc = pipe  # type: ignore[assignment]
    at_once, times = [], []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(p._pump)
            for _ in range(pokes):
                times.append(anyio.current_time())
                p.poke()
                at_once.append(pipe.taken())
                await anyio.sleep(every)
            await anyio.sleep(linger + 0.01)
            at_once.append(pipe.taken())
            tg.cancel_scope.cancel()
    finally:
        pipe.close()
    return p, at_once, times


def test_pokes_within_linger_are_one_and_the_last_write_is_always_told() -> None:
    """A hundred writes 7 ms apart: the process is woken about every ``linger`` (20 ms), not
    per write; the first poke goes at once, and the writes after the last poke written are told
    too (a held poke is written ``linger`` after the one before)."""
    p, got, times = _run_virtually(0.02, 100, 0.007)
    assert got[0] == 1  # nothing waited before: written at once
    assert 30 <= p.pokes_written <= 40 and sum(got) == p.pokes_written  # ~0.7 s / 20 ms, not 100
    assert p._poked_at >= times[-1]  # the last write's rows were poked for, after it
    assert not p._held.is_set()


def test_pokes_further_apart_than_linger_each_go_at_once() -> None:
    p, got, _ = _run_virtually(0.02, 10, 0.1)
    assert got == [1] * 10 + [0] and p.pokes_written == 10


def test_no_linger_is_a_poke_per_write() -> None:
    p, got, _ = _run_virtually(0.0, 50, 0.005)
    assert got == [1] * 50 + [0] and p.pokes_written == 50
