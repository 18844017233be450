"""Benchmark of agreement enforcement per record (issue 4): policy decision plus masking.

What the provider node does for each answer under an agreement, on a typical vehicle-violation
answer of one record: decide the call from the compiled policy (``Policy.decide``), then parse
the answer, apply the agreement's projection and masking at ``records_at``
(``RecordMasker.apply_document``) and serialize it again. Side by side in the same run, the
baseline every node pays anyway without agreements: orjson loads and dumps of the same body.
Target: decision plus masking under 50 µs per record.

Prints one JSON document.

    .venv/bin/python bench/agreements.py [--records 100000]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qiao.agreements.document import Agreement
from qiao.agreements.masking import compile_masking
from qiao.agreements.policy import compile_policy

TARGET_US = 50.0
INSTANCE = "CN-DEMO"
PROVIDER, CONSUMER = "11440300MB2C9K3U0Q", "11440300MB8X1TQE5F"
CLIENT = f"{INSTANCE}/{CONSUMER}/traffic-enforcement"
FIELDS = (
    "record_id",
    "plate",
    "code",
    "description",
    "occurred_at",
    "location",
    "fine_yuan",
    "points",
    "handled",
)
# One answer as the demo's public-security backend gives it (fictional data).
ANSWER = {
    "plate": "粤B20368",
    "total": 1,
    "violations": [
        {
            "record_id": "V2026112000137",
            "plate": "粤B20368",
            "code": "1625",
            "description": "驾驶机动车违反道路交通信号灯通行",
            "occurred_at": "2026-11-20T08:31:00+08:00",
            "location": "桥城市滨江区滨江大道与文一路交叉口",
            "fine_yuan": 200,
            "points": 6,
            "handled": False,
        }
    ],
}


def _raw(key: Ed25519PrivateKey) -> str:
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(pub).decode()


def setup() -> tuple[Any, Any, Agreement]:
    """The demo's violations agreement (narrowed, location and plate masked), signed by both
    parties and compiled as a node compiles its configuration."""
    keys = {org: Ed25519PrivateKey.generate() for org in (PROVIDER, CONSUMER)}
    now = datetime.now(UTC)
    agreement = Agreement.model_validate(
        {
            "id": "agr-benchmark0000001",
            "instance": INSTANCE,
            "provider": {"org": PROVIDER, "name": "桥城市公安局"},
            "consumer": {
                "org": CONSUMER,
                "name": "桥城市交通运输局",
                "apps": ["traffic-enforcement"],
            },
            "resource": {
                "code": "vehicle-violations",
                "version": 1,
                "sha256": hashlib.sha256(b"catalog").hexdigest(),
                "sharing_type": "conditional",
            },
            "fields": FIELDS[1:],
            "masking": {"location": {"rule": "address"}, "plate": {"rule": "plate"}},
            "purposes": ["traffic-enforcement"],
            "valid_from": (now - timedelta(days=1)).isoformat(),
            "valid_until": (now + timedelta(days=365)).isoformat(),
            "rate_limit": {"requests": 500, "per_seconds": 1},
            "daily_quota": 50_000,
            "issued_at": now.isoformat(),
        }
    )
    document = agreement.to_json()
    conf = {
        "organizations": [
            {"code": org, "name": org, "apps": [], "agreement_key": _raw(k)}
            for org, k in keys.items()
        ],
        "agreements": [
            {
                "agreement": document,
                "sha256": agreement.sha256(),
                "signatures": {
                    "provider": agreement.sign(keys[PROVIDER]),
                    "consumer": agreement.sign(keys[CONSUMER]),
                },
                "state": "active",
                "reason": "",
            }
        ],
        "emergencies": [],
    }
    policy = compile_policy(conf, {(PROVIDER, "vehicle-violations"): FIELDS})
    masker = compile_masking(agreement.fields, agreement.masking, b"k" * 32)
    return policy, masker, agreement


def per_call_us(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    best = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t0) / n * 1e6)
    return round(min(best), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    policy, masker, _agreement = setup()
    body = orjson.dumps(ANSWER)
    now = datetime.now(UTC)
    query = {"plate": "粤B20368"}

    def decide() -> object:
        return policy.decide(
            CLIENT,
            PROVIDER,
            "vehicle-violations",
            "GET",
            "",
            query,
            "traffic-enforcement",
            "",
            now,
            "provider",
        )

    def baseline() -> object:
        return orjson.dumps(orjson.loads(body))

    def mask() -> object:
        return orjson.dumps(masker.apply_document(orjson.loads(body), "/violations"))

    def both() -> object:
        decide()
        return mask()

    masked = orjson.loads(mask())["violations"][0]
    assert "record_id" not in masked and masked["location"].endswith("****"), masked
    n = args.records
    results = {
        "decide_us": per_call_us(decide, n),
        "baseline_orjson_roundtrip_us": per_call_us(baseline, n),
        "mask_with_orjson_us": per_call_us(mask, n),
        "decide_and_mask_us": per_call_us(both, n),
    }
    added = results["decide_and_mask_us"] - results["baseline_orjson_roundtrip_us"]
    print(
        json.dumps(
            {
                "benchmark": "agreement-decision-and-masking",
                "record": "vehicle violation, 9 fields, 8 projected, 2 masked",
                "records": n,
                **results,
                "added_over_baseline_us": round(added, 2),
                "ratio_to_baseline": round(
                    results["decide_and_mask_us"] / results["baseline_orjson_roundtrip_us"], 2
                ),
                "target_us": TARGET_US,
                "meets_target": results["decide_and_mask_us"] < TARGET_US,
                "masked_sample": masked,
                "machine": {
                    "python": platform.python_version(),
                    "system": platform.platform(),
                    "timing": "best of 5 rounds",
                },
            },
            ensure_ascii=False,
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
