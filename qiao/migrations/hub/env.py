"""Alembic environment of the hub's database."""

from qiao.migrations.common import run
from qiao.registry import models  # noqa: F401  (registers the tables)
from qiao.db import HubBase

run(HubBase.metadata)
