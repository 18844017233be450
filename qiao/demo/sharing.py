"""The demo city's sharing: subscriptions, applications, decisions and emergency agreements.

Everything goes through the hub's agreement service as the departments' own people would do
it (an app developer applies, the provider's approver decides), so the city runs on real,
signed agreements: unconditional resources are subscribed to, conditional ones applied for and
approved — one narrowed and masked, one refused with its reason — and the health commission's
non-public statistics reach the other departments only through emergency agreements, usable
while an emergency is declared (the epidemic drill in ``qiao demo``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qiao.identity.roles import Principal, Role

# Purpose codes the demo's apps send as X-Qiao-Purpose.
PURPOSES = {
    "traffic-enforcement": "交通运输执法:核查营运车辆违法记录",
    "traffic-management": "道路交通安全管理与事故统计分析",
    "loan-review": "企业贷款贷前审查",
    "case-investigation": "经济犯罪案件侦查中的企业核查",
    "patrol-planning": "治安巡逻路线规划",
    "account-opening": "开立账户实名核验",
    "license-review": "市场主体登记实名核验",
    "epidemic-response": "突发公共卫生事件应急处置",
    "bike-dispatch": "辖区公共自行车调度与停放秩序管理",
}


@dataclass
class DemoSharing:
    """What the demo set up, for the scenario and its checks."""

    agreements: dict[str, str] = field(default_factory=dict)  # label -> agreement id
    refused_request: str = ""
    refusal_reason: str = ""
    # The fields of the masked agreement and how they are masked.
    masked: dict[str, str] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()


def person(codes: dict[str, str], dept: str, role: Role) -> Principal:
    """The demo user ``{dept}-{role}`` (seeded by ``Deployment.seed_users``) as a principal."""
    return Principal(
        f"user:{dept}-{role.value}", frozenset({role}), org=codes[dept], kind="user", amr=("pwd",)
    )


def admin(name: str = "admin") -> Principal:
    return Principal(
        f"user:{name}", frozenset({Role.PLATFORM_ADMIN}), kind="user", amr=("pwd", "otp")
    )


def seed_agreements(reg: Any, codes: dict[str, str]) -> DemoSharing:
    from qiao.agreements.document import Masking, MaskRule, RateLimit
    from qiao.agreements.service import AgreementService, Application, Narrowing

    svc = AgreementService(reg)
    out = DemoSharing()
    dev = {d: person(codes, d, Role.APP_DEVELOPER) for d in codes}
    approver = {d: person(codes, d, Role.APPROVER) for d in codes}

    # 无条件共享: subscribed to at once (still signed, recorded and enforced). A subscription
    # masks the personal items by their data element's default rule: the accidents' first
    # party's plate and citizen ID reach transport masked (qiao.demo.streams).
    for label, consumer, provider, code, purposes, end_user in (
        ("accidents", "transport", "police", "traffic-accidents", ("traffic-management",), False),
        ("credit-bank", "bank", "market", "enterprise-credit", ("loan-review",), True),
        ("credit-police", "police", "market", "enterprise-credit", ("case-investigation",), False),
        ("bikes", "police", "transport", "bike-stations", ("patrol-planning",), False),
        # The Donghu district office takes station status as it changes (a webhook, see
        # qiao.demo.streams) to send its bike-dispatch crews where stations run empty or full.
        ("bikes-district", "district", "transport", "bike-stations", ("bike-dispatch",), False),
    ):
        view = svc.subscribe(
            dev[consumer], codes[provider], code, purposes=purposes, end_user_required=end_user
        )
        out.agreements[label] = view.id

    # 有条件共享: the transport bureau applies for violation records; public security's
    # approver approves it narrowed — without the internal record number — and masked: the
    # exact location generalized to the district, for enforcement statistics need no more.
    request = svc.apply(
        dev["transport"],
        codes["police"],
        "vehicle-violations",
        Application(
            purposes=("traffic-enforcement",),
            purpose_text=PURPOSES["traffic-enforcement"],
            legal_basis="《中华人民共和国道路运输条例》第五十八条",
            apps=("traffic-enforcement",),
            valid_days=365,
            daily_quota=50_000,
            rate_limit=RateLimit(requests=500, per_seconds=1),
        ),
    )
    fields = (
        "plate",
        "code",
        "description",
        "occurred_at",
        "location",
        "fine_yuan",
        "points",
        "handled",
    )
    _, agreement = svc.approve(
        approver["police"],
        request.id,
        Narrowing(fields=fields, masking={"location": Masking(rule=MaskRule.ADDRESS)}),
    )
    out.agreements["violations"] = agreement.id
    # plate is masked by default (a personal data element with a masking rule for its format)
    out.masked = {"location": MaskRule.ADDRESS.value, "plate": MaskRule.PLATE.value}
    out.hidden = ("record_id",)

    # Identity verification for the bank's and market regulation's real-name checks.
    for consumer, app, purpose in (
        ("bank", "credit-check", "account-opening"),
        ("market", "registration", "license-review"),
    ):
        request = svc.apply(
            dev[consumer],
            codes["police"],
            "identity-verification",
            Application(
                purposes=(purpose,),
                purpose_text=PURPOSES[purpose],
                legal_basis="《中华人民共和国反洗钱法》第十六条"
                if consumer == "bank"
                else "《中华人民共和国市场主体登记管理条例》第十九条",
                methods=("POST",),
                apps=(app,),
                end_user_required=consumer == "bank",
            ),
        )
        _, agreement = svc.approve(approver["police"], request.id)
        out.agreements[f"identity-{consumer}"] = agreement.id

    # One refusal, with its reason (国务院令第809号 requires one).
    request = svc.apply(
        dev["market"],
        codes["police"],
        "vehicle-violations",
        Application(
            purposes=("license-review",),
            purpose_text="核查企业车辆违法情况",
            legal_basis="《中华人民共和国市场主体登记管理条例》",
        ),
    )
    out.refusal_reason = "市场主体登记审查不需要机动车违法记录;所列依据未授权该用途。"
    svc.refuse(approver["police"], request.id, out.refusal_reason)
    out.refused_request = request.id

    # The health commission's statistics: emergency agreements, pre-arranged by the platform
    # administrator, usable only while an emergency is declared (the epidemic drill).
    for consumer in ("police", "transport", "market"):
        view = svc.arrange_emergency(
            admin(), codes["health"], "epidemic-daily", codes[consumer], ("epidemic-response",)
        )
        out.agreements[f"epidemic-{consumer}"] = view.id
    return out
