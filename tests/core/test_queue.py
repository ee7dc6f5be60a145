from hypothesis import given
from hypothesis import strategies as st

from gateway.core.queue import Lane, Timers


def test_lane_is_fifo_and_retries_go_first():
    lane = Lane()
    for row in range(5):
        lane.push(row)
    assert lane.pop() == 0
    assert lane.pop() == 1
    lane.push_front(1)
    lane.push_front(0)
    assert list(lane) == [1, 0, 2, 3, 4]
    assert [lane.pop() for _ in range(len(lane))] == [1, 0, 2, 3, 4]
    assert not lane


@given(st.lists(st.integers(0, 2), max_size=20000))
def test_lane_compaction_keeps_order(ops):
    lane, model, n = Lane(), [], 0
    for op in ops:
        if op and lane:
            assert lane.pop() == model.pop(0)
        else:
            lane.push(n)
            model.append(n)
            n += 1
    assert list(lane) == model


def test_timers_never_release_early():
    t = Timers()
    t.add(1, 10.2)
    t.add(2, 10.0)
    t.add(3, 11.0)
    assert t.pop_due(10.1) is not None  # second 10 (row 2, due 10.0)
    assert t.pop_due(10.9) is None  # row 1 is due at 10.2, released at 11
    assert sorted(t.pop_due(11.0)) == [1, 3]
    assert len(t) == 0 and t.next_due() is None
