"""``SqliteStore.sends_since`` finds a message's last ``submitted`` in its history text without
decoding it: it must agree with decoding, whatever the reasons and carriers say."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.base import Change
from gateway.store.sqlite import _coalesce, _history_dec, _last_submit

TEXT = st.lists(st.sampled_from([*'ab,"[]\\ {}:', "submitted", '"submitted",', ',"submitted",', "1.5"]),
                max_size=12).map("".join)
CHANGES = st.lists(
    st.builds(Change, message_id=st.just(1), state=st.sampled_from(["queued", "submitted", "deferred", "submitted"]),
              at=st.floats(0, 2e9, allow_nan=False), reason=TEXT, carrier=st.none() | TEXT,
              error_code=st.none() | st.integers(0, 65535)),
    min_size=1, max_size=8,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(CHANGES)
def test_last_submit_agrees_with_decoding_the_history(changes) -> None:
    history = _coalesce(changes)[0][7]  # what ``record`` appends to messages.history
    decoded = [e.at for e in _history_dec.decode(f"[{history}]") if e.state == "submitted"]
    assert _last_submit(history) == (decoded[-1] if decoded else None)
