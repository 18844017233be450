"""Alembic environment of a node's database."""

from qiao.db import NodeBase
from qiao.events import webhook_models  # noqa: F401
from qiao.exchange import models  # noqa: F401  (registers the tables)
from qiao.ledger import witness_models  # noqa: F401
from qiao.migrations.common import run

run(NodeBase.metadata)
