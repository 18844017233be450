"""Shared body of the Alembic environments (online mode only: Qiao migrates live databases)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData

from qiao.db import make_engine


def run(metadata: MetaData) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
