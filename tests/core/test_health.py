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


def test_a_carrier_that_cannot_say_it_is_back_is_probed_with_a_growing_cool_off() -> None:
    """HTTP carriers: down after down_after without a link, up again (half-open) after the
    cool-off; a failed probe doubles it, a link that comes up resets it."""
    h = LinkHealth({"h": 5.0}, probe_after={"h": 10.0}, probe_max=30.0)
    assert h.observe("h", 0, 0.0) is None
    assert h.observe("h", 0, 5.0) == "down"
    assert h.observe("h", 0, 14.9) is None
    assert h.observe("h", 0, 15.0) == "up" and not h.is_down("h")  # probe
    assert h.observe("h", 0, 19.9) is None
    assert h.observe("h", 0, 20.0) == "down"  # probe failed: next cool-off 20 s
    assert h.observe("h", 0, 39.9) is None
    assert h.observe("h", 0, 40.0) == "up"
    assert h.observe("h", 0, 45.0) == "down"  # failed again: 30 s (the maximum)
    assert h.observe("h", 0, 74.9) is None
    assert h.observe("h", 0, 75.0) == "up"
    assert h.observe("h", 1, 76.0) is None  # a request succeeded: healthy, cool-off reset
    assert h.observe("h", 0, 80.0) is None
    assert h.observe("h", 0, 85.0) == "down"
    assert h.observe("h", 0, 95.0) == "up"  # 10 s again


def test_carriers_that_reconnect_by_themselves_are_never_probed() -> None:
    h = LinkHealth({"s": 1.0}, probe_after={"h": 1.0})
    assert h.observe("s", 0, 0.0) is None
    assert h.observe("s", 0, 1.0) == "down"
    assert h.observe("s", 0, 1000.0) is None and h.is_down("s")
