"""Alembic environment of a node's database."""

from qiao.migrations.common import run
from qiao.exchange import models  # noqa: F401  (registers the tables)
from qiao.db import NodeBase

run(NodeBase.metadata)
