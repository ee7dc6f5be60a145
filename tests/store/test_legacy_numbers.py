"""A store written before numbers were canonical at the door may hold a recipient with
non-ASCII digits: reading it (GET /v1/messages/{id}, recovery) must not fail for ever."""

from __future__ import annotations

import sqlite3

from gateway.core.model import Job, Recipient
from gateway.store.sqlite import SqliteStore


def test_a_row_with_non_ascii_digits_is_read_folded(tmp_path) -> None:
    path = str(tmp_path / "old.db")
    store = SqliteStore(path)
    job = Job(id="job_old", tenant="acme", sender="S", template="hi", category="marketing")
    store.add_job(job, 100, [(0, Recipient(to="+12125550190"))], 1.0)
    store.close()
    con = sqlite3.connect(path)
    con.execute("""UPDATE messages SET recipient = '{"to":"+١٢١٢٥٥٥٠١٩٠"}' WHERE id = 100""")
    con.commit()
    con.close()
    store = SqliteStore(path)
    assert store.message("acme", 100).recipient.to == "+12125550190"
    [(stored, rest)] = list(store.unfinished())
    assert [r.to for _, r, _ in rest] == ["+12125550190"]
