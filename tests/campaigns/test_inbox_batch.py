"""A batch of flow sends recorded in their conversations' history (``Store.conversations_record``):
a few statements a batch, whatever its size, on both engines (it was about seven a send, and on
PostgreSQL each of them slower as the conversations grew: docs/BENCHMARKS.md, branch ``pgflows3``)."""

from typing import Any

import pytest

from campaigns.core import conversations as C
from campaigns.store import Store
from campaigns.store.sql import Tx

T0 = 1_765_000_000.0
PHONES = [f"+1555{i:07d}" for i in range(1, 51)]


def sent(mid: str, text: str, at: float) -> Any:
    return lambda c: (C.record_sent(c, mid, text, at, "flow:cart", kind="flow"), [])


class _Counted:
    """A cursor that notes each statement it is given."""

    def __init__(self, cur: Any, calls: list[str]) -> None:
        self._cur, self._calls = cur, calls

    def execute(self, sql: Any, *args: Any, **kw: Any) -> Any:
        self._calls.append(str(sql))
        return self._cur.execute(sql, *args, **kw)

    def executemany(self, sql: Any, *args: Any, **kw: Any) -> Any:
        self._calls.append(str(sql))
        return self._cur.executemany(sql, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def test_a_batch_of_flow_sends_is_recorded_in_a_few_statements(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for p in PHONES[:25]:  # half the conversations exist, with a send of their own
        store.conversation_apply("acme", p, sent(f"flow-{p}-0", "before", T0), now=T0, message_id=f"flow-{p}-0")
    batch = [(p, sent(f"flow-{p}-1", "hi", T0 + 1), f"flow-{p}-1") for p in PHONES]
    batch += [(PHONES[0], sent(f"flow-{PHONES[0]}-2", "again", T0 + 2), f"flow-{PHONES[0]}-2"),  # two for one phone
              (PHONES[1], sent(f"flow-{PHONES[1]}-0", "before", T0), f"flow-{PHONES[1]}-0"),  # recorded before
              (PHONES[2], sent(f"flow-{PHONES[2]}-1", "hi", T0 + 1), f"flow-{PHONES[2]}-1")]  # twice in the batch
    calls: list[str] = []
    init = Tx.__init__
    monkeypatch.setattr(Tx, "__init__", lambda self, cur, ph: init(self, _Counted(cur, calls), ph))
    assert store.conversations_record("acme", batch, now=T0 + 5) == 51
    assert len(calls) <= 5, calls  # conversations made, heads read, stored messages read, messages written, heads moved
    calls.clear()
    assert store.conversations_record("acme", batch, now=T0 + 6) == 0  # a re-post: reads only
    assert len(calls) <= 3, calls
    monkeypatch.undo()

    def history(p: str) -> list[str]:
        conv = store.conversation_by_phone("acme", p)
        assert conv is not None
        return [i.text for _, i in store.conversation_history("acme", conv.id)]

    assert history(PHONES[0]) == ["before", "hi", "again"]
    assert history(PHONES[2]) == ["before", "hi"] and history(PHONES[49]) == ["hi"]
    last = store.conversation_by_phone("acme", PHONES[49])
    assert last is not None and last.last_at == T0 + 5 and last.status != "needs_reply"
