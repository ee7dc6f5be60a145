from gateway.core.caps import WEEK, WeeklyCap


def test_three_in_seven_days():
    cap = WeeklyCap(3)
    for t in (0.0, 10.0, 20.0):
        assert cap.next_slot(1, t) == t
        cap.record(1, t)
    assert cap.next_slot(1, 30.0) == WEEK  # the first send leaves the window then
    assert cap.next_slot(1, WEEK) == WEEK
    assert cap.next_slot(2, 30.0) == 30.0  # other recipients unaffected


def test_refund_frees_the_slot():
    cap = WeeklyCap(1)
    cap.record(7, 5.0)
    assert cap.next_slot(7, 6.0) == 5.0 + WEEK
    cap.refund(7, 5.0)
    assert cap.next_slot(7, 6.0) == 6.0
    assert len(cap) == 0


def test_prune_forgets_old_sends():
    cap = WeeklyCap(2)
    cap.record(1, 0.0)
    cap.record(2, WEEK)
    assert cap.prune(WEEK + 1) == 1
    assert cap.count(2, WEEK + 1) == 1


def test_take_counts_only_when_free():
    cap = WeeklyCap(2)
    assert cap.take(1, 0.0) == 0.0
    assert cap.take(1, 1.0) == 1.0
    assert cap.take(1, 2.0) == WEEK  # full: nothing counted
    assert cap.count(1, 2.0) == 2
    assert cap.take(1, WEEK + 0.5) == WEEK + 0.5
