from gateway.core.health import LinkHealth


def test_down_after_a_while_without_binds_and_up_at_once() -> None:
    h = LinkHealth({"a": 5.0, "b": 1.0})
    assert h.observe("a", 2, 0.0) is None
    assert h.observe("a", 0, 1.0) is None
    assert h.observe("a", 0, 5.9) is None
    assert h.observe("a", 0, 6.0) == "down" and h.is_down("a")
    assert h.observe("a", 0, 60.0) is None  # said once
    assert h.observe("a", 1, 61.0) == "up" and not h.is_down("a")
    assert h.observe("b", 0, 0.0) is None


def test_a_blip_moves_nothing() -> None:
    h = LinkHealth({"a": 5.0})
    assert h.observe("a", 0, 0.0) is None
    assert h.observe("a", 1, 4.0) is None
    assert h.observe("a", 0, 8.0) is None  # the clock starts again
    assert h.observe("a", 0, 13.0) == "down"
