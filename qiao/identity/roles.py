"""Who is calling the hub, and what each role may do.

Every hub endpoint resolves its caller into a ``Principal`` (``qiao.hub.auth``) and asks it
whether it holds a role, in general or for one organization. The roles are the ones the
platform's users know from their own work (统一身份认证):

- platform administrator: runs the exchange; may do anything, in every organization
- organization administrator: manages its own organization's users, apps and resources
- data steward: publishes and maintains its organization's catalog entries
- approver: decides sharing requests made to its organization
- auditor: reads audit records and the ledger, never payloads
- security officer: nodes, keys, certificates, emergency mode
- app developer: its organization's apps and their credentials
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    PLATFORM_ADMIN = "platform-admin"
    ORG_ADMIN = "org-admin"
    DATA_STEWARD = "data-steward"
    APPROVER = "approver"
    AUDITOR = "auditor"
    SECURITY_OFFICER = "security-officer"
    APP_DEVELOPER = "app-developer"


ROLE_NAMES_ZH: dict[Role, str] = {
    Role.PLATFORM_ADMIN: "平台管理员",
    Role.ORG_ADMIN: "单位管理员",
    Role.DATA_STEWARD: "数据管理员",
    Role.APPROVER: "审批人",
    Role.AUDITOR: "审计员",
    Role.SECURITY_OFFICER: "安全管理员",
    Role.APP_DEVELOPER: "应用开发者",
}


def parse_roles(text: str | list[str] | tuple[str, ...]) -> frozenset[Role]:
    """Roles from ``"data-steward,approver"`` or a list; raises ``ValueError`` naming an
    unknown role."""
    items = text.split(",") if isinstance(text, str) else list(text)
    roles: set[Role] = set()
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            roles.add(Role(item))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ValueError(f"unknown role {item!r}; the roles are {known}") from None
    return frozenset(roles)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an operator token, a signed-in user or an access token.

    ``org`` is the organization (USCC) the caller acts for; ``None`` for platform-wide
    callers. ``subject`` is what the record of administrative actions names as the actor.
    """

    subject: str
    roles: frozenset[Role]
    org: str | None = None
    kind: str = "token"  # "operator" | "user" | "token" | "cli"
    # How the caller authenticated (RFC 8176 amr values, e.g. "pwd", "otp"), for the audit.
    amr: tuple[str, ...] = field(default=())

    @property
    def is_platform_admin(self) -> bool:
        return Role.PLATFORM_ADMIN in self.roles

    def has(self, *roles: Role, org: str | None = None) -> bool:
        """Whether the caller holds any of ``roles`` — for ``org`` when one is given.

        A platform administrator holds every role everywhere. Anyone else holds their roles
        in their own organization only."""
        if self.is_platform_admin:
            return True
        if not self.roles.intersection(roles):
            return False
        return org is None or org == self.org


CLI = Principal("cli:local-operator", frozenset({Role.PLATFORM_ADMIN}), kind="cli")
"""Commands run on the hub's own machine act as the platform administrator: whoever can
read the hub's database and keys already holds every power the API could grant."""
