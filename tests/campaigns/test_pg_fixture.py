"""The PostgreSQL fixture itself: a real server answers, and each test's schema is its own."""

import psycopg


def test_pg_url_is_a_fresh_schema(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE probe (x INTEGER)")
        conn.execute("INSERT INTO probe VALUES (1)")
        assert conn.execute("SELECT count(*) FROM probe").fetchone() == (1,)
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        assert schema.startswith("t_")


def test_pg_url_does_not_see_other_tests(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()")
        assert rows.fetchone() == (0,)
