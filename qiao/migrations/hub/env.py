"""Alembic environment of the hub's database."""

from qiao.agreements import emergencies as emergency_models  # noqa: F401
from qiao.agreements import models as agreement_models  # noqa: F401
from qiao.catalog import models as catalog_models  # noqa: F401
from qiao.db import HubBase
from qiao.events import models as event_models  # noqa: F401
from qiao.identity import models as identity_models  # noqa: F401
from qiao.identity import oidc_models  # noqa: F401
from qiao.ledger import cosigning, exchanges  # noqa: F401
from qiao.ledger import models as ledger_models  # noqa: F401
from qiao.migrations.common import run
from qiao.registry import models  # noqa: F401  (registers the tables)

run(HubBase.metadata)
