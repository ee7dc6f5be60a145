"""The bench's status receiver (`bench/status_receiver.py`): each key's final event counts once,
whatever the requests' kind, order and the way the bytes are cut into reads."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.status_receiver import Receiver, _Connection


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True


def _dlr(i: int, t: int) -> bytes:
    return f"GET /dlr?id={i}&t={t} HTTP/1.1\r\nhost: x\r\n\r\n".encode()


def _hooks(events: list[tuple[int | None, str]]) -> bytes:
    body = json.dumps({"events": [{"message_id": "m", "state": s, "index": i, "at": 1.0, "extra": [1]}
                                  for i, s in events]}).encode()  # fmt: skip
    return b"POST /hooks HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


_requests = st.lists(
    st.one_of(
        st.tuples(st.just("dlr"), st.integers(0, 12), st.sampled_from([1, 2, 4, 8, 16])),
        st.tuples(st.just("hooks"), st.lists(st.tuples(st.one_of(st.none(), st.integers(-1, 12)),
                                                       st.sampled_from(["submitted", "accepted", "delivered",
                                                                        "undelivered", "expired"])), max_size=5)),
    ),
    max_size=30,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(_requests, st.lists(st.integers(1, 60), min_size=1, max_size=20))
def test_each_key_counts_once_however_the_bytes_arrive(requests, cuts):
    stream, finals = b"", []
    for r in requests:
        if r[0] == "dlr":
            stream += _dlr(r[1], r[2])
            finals += [r[1]] if r[2] & 19 else []
        else:
            stream += _hooks(r[1])
            finals += [i for i, s in r[1] if s in ("delivered", "undelivered", "expired")]
    receiver = Receiver()
    receiver.reset(10, 10)
    conn, transport = _Connection(receiver), _Transport()
    conn.connection_made(transport)
    at, k = 0, 0
    while at < len(stream):
        step = cuts[k % len(cuts)]
        conn.data_received(stream[at : at + step])
        at, k = at + step, k + 1
    in_range = [i for i in finals if i is not None and 0 <= i < 10]
    assert receiver.final == len(set(in_range))
    assert receiver.duplicates == len(in_range) - len(set(in_range))
    assert receiver.out_of_range == len(finals) - len(in_range)
    assert receiver.requests == len(requests) and receiver.bad == 0
    assert transport.out.count(b"HTTP/1.1 200 OK") == len(requests) and not transport.closed
    assert (receiver.done_at is not None) == (len(set(in_range)) == 10)


def test_chunked_bodies_are_refused_and_counted():
    receiver = Receiver()
    conn, transport = _Connection(receiver), _Transport()
    conn.connection_made(transport)
    conn.data_received(b"POST /hooks HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert receiver.bad == 1 and transport.closed and transport.out.startswith(b"HTTP/1.1 411")
