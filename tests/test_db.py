from sqlalchemy import inspect, text

from qiao.db import downgrade, make_engine, migrate


def test_migrations_up_and_down(db_url: str) -> None:
    for store, table in (("hub", "organizations"), ("node", "exchange_records")):
        migrate(store, db_url)
        eng = make_engine(db_url)
        assert table in inspect(eng).get_table_names()
        migrate(store, db_url)  # idempotent
        downgrade(store, db_url)
        assert table not in inspect(eng).get_table_names()
        eng.dispose()
        # The hub and node histories share a database here, so clear Alembic's marker.
        with make_engine(db_url).begin() as c:
            c.execute(text("DROP TABLE alembic_version"))


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
