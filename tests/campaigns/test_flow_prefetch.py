"""A batch's prefetch (``FlowTx.prefetch``: the subscribers with their stats row and tags in one
statement) reads exactly what the one-subscriber path (``FlowTx._read_subscriber``: three
statements) reads, on both engines: fields, decoded attributes, tags (none, several, odd
characters), stats (a row or none), and nothing for another tenant's subscriber or an unknown id."""

from __future__ import annotations

from campaigns.core.events import Profile
from campaigns.store import Store

T0 = 1_700_000_000.0


def _world(store: Store) -> list[int]:
    ids = []
    for i in range(12):
        tenant = "other" if i % 5 == 4 else "acme"
        phone = f"+4479112{i:05d}"
        profile = Profile(phone=phone, first_name=f"N{i}" if i % 3 else None, attributes={"k": i, "s": "x,\"y\""} if i % 2 else {})
        sub, _ = store.put_subscriber(tenant, profile, phone=phone, at=T0, now=T0)
        ids.append(sub.id)
        with store._tx() as tx:  # type: ignore[attr-defined]
            for tag in (["vip", "a,b", 'q"uote', "ü", "[x]"][: i % 6]):
                tx.run("INSERT INTO subscriber_tags (tenant, subscriber_id, tag) VALUES (?, ?, ?)", (tenant, sub.id, tag))
            if i % 3 == 1:
                tx.run("DELETE FROM subscriber_stats WHERE subscriber_id = ?", (sub.id,))
            elif i % 3 == 2:
                tx.run("INSERT INTO subscriber_stats (tenant, subscriber_id, orders_count, total_spent, last_order_at) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (subscriber_id) DO UPDATE SET orders_count = excluded.orders_count, "
                       "total_spent = excluded.total_spent, last_order_at = excluded.last_order_at",
                       (tenant, sub.id, i, 100 * i, T0 - i))  # fmt: skip
    return ids


def test_the_prefetch_reads_what_the_one_subscriber_path_reads(store: Store) -> None:
    ids = _world(store) + [10_000_000]  # an id nobody has
    with store.flow_tx("acme") as ftx:
        one_by_one = {sid: ftx._read_subscriber(sid) for sid in ids}
        ftx.prefetch(ids)
        batch = {sid: ftx._subs[sid] for sid in ids}
    assert batch == one_by_one
    assert sum(v is None for v in batch.values()) == 3  # two of the other tenant, the unknown id
    assert any(v is not None and len(v[1]) == 5 and v[2] for v in batch.values())  # tags and stats both read
    assert any(v is not None and v[2] == {} for v in batch.values())  # no stats row: no stats
