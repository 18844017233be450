"""Crash consistency (issue 9, part 1): under load through the demo city, kill -9 the hub, the
consumer node, the provider node, the databases' client connections and the NATS server, one
per round at a random moment, and check after each restart that nothing acknowledged is
missing or doubled, in the nodes' records, on the ledger or in the event stream, that the
ledger verifies, and that every process came back by itself.

The rounds cycle through the targets (``reliability.crashcity.TARGETS``): 5 rounds in the
short profile (one per target), 20 in the full one. The random moments come from a seed
printed at the start (set ``QIAO_CRASH_SEED`` to replay one).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from reliability.crashcity import (
    RECOVERY_DEADLINE,
    TARGETS,
    CrashCity,
    Events,
    Exchanges,
    Findings,
    LedgerReader,
    Load,
    Subscriber,
    check,
    crash_city,
    event_id,
    ids,
    summary,
)
from reliability.figures import PROFILE, record
from tests.conftest import IN_CI, PgDatabases
from tests.integration.conftest import wait_for
from tests.integration.test_events_faults import NATS_SERVER

ROUNDS = PROFILE.pick(len(TARGETS), 20)
SECTION = "crash"


@pytest.fixture(scope="module")
def city(
    pg_databases: PgDatabases, pg_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CrashCity]:
    if not Path(NATS_SERVER).exists():
        reason = f"nats-server is not installed at {NATS_SERVER}"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    with crash_city(tmp_path_factory.mktemp("crash"), pg_databases.new, pg_admin) as c:
        yield c


def test_kill_9_under_load_loses_and_duplicates_nothing_acknowledged(city: CrashCity) -> None:
    seed = int(os.environ.get("QIAO_CRASH_SEED") or time.time_ns() % 1_000_000)
    print(f"\n[crash] seed {seed} (QIAO_CRASH_SEED={seed} replays the kill moments)")
    rng = random.Random(seed)
    load = Load(city, Exchanges(city), Events(city), Subscriber(city))
    ledger = LedgerReader(city)
    rounds: dict[str, int] = defaultdict(int)
    recovery: dict[str, list[float]] = defaultdict(list)
    verified = cut = 0
    problems: dict[str, str] = {}  # each problem with the round it first showed in
    # The checks are cumulative (every round checks everything acknowledged so far): the last
    # round's findings are the run's.
    final = Findings()
    try:
        for n in range(ROUNDS):
            target = TARGETS[n % len(TARGETS)]
            started = time.monotonic()
            load.start()
            # The kill must meet load in flight: wait for both kinds to be flowing first.
            wait_for(partial(load.answered_since, started), RECOVERY_DEADLINE)
            time.sleep(rng.uniform(0.1, 1.0))
            killed_at = time.monotonic()
            assert city.kill(target) > 0, f"round {n + 1}: nothing of the {target} was killed"
            # Down for a moment, so that calls in flight and new ones meet the dead part.
            time.sleep(rng.uniform(0.2, 0.6))
            restarted = time.monotonic()
            city.restart(target)
            city.wait_healthy()
            healthy = time.monotonic()
            # Recovered: every process healthy and the apps' calls acknowledged again.
            back = wait_for(partial(load.answered_since, restarted), RECOVERY_DEADLINE)
            recovery[target].append(max(healthy, back) - restarted)
            load.stop()
            assert not load.events.unacked, f"round {n + 1} ({target}): {load.events.unacked}"
            missed = load.cut_off(killed_at, max(healthy, back))
            cut += missed
            # The kill met the load: calls were under way while the part was dead.
            assert load.in_flight(killed_at, restarted), f"round {n + 1}: no call met the kill"
            # The nodes' ledger submitters drain their outboxes (the records they hold).
            wait_for(lambda: not any(city.ledger_pending().values()), RECOVERY_DEADLINE)
            # ... and the hub's ledger loop signs and has them cosigned by a quorum again.
            wait_for(partial(city.cosigned, city.ledger_size()), RECOVERY_DEADLINE)
            load.subscriber.drain()
            found = final = check(city, load, ledger)
            findings = ledger.verify()
            verified += not findings
            rounds[target] += 1
            for line in [*found.problems(), *(f"ledger: {x}" for x in findings[:5])]:
                problems.setdefault(line, f"round {n + 1} ({target})")
            print(
                f"[crash] round {n + 1}/{ROUNDS} {target}: back in {recovery[target][-1]:.1f} s, "
                f"{missed} calls cut off; so far {len(load.exchanges.acked)} exchanges and "
                f"{len(load.events.acked)} events acknowledged, lost {found.lost}, "
                f"duplicated {found.duplicated}, "
                f"ledger {'verifies' if not findings else 'DOES NOT VERIFY'}"
            )
    finally:
        load.stop_flag.set()
        _figures(seed, load, rounds, recovery, verified, cut, final)
    assert sum(rounds.values()) == ROUNDS
    assert not problems, "\n".join(f"{r}: {line}" for line, r in list(problems.items())[:20])
    _control(city, load, ledger)


def _control(city: CrashCity, load: Load, ledger: LedgerReader) -> None:
    """The checks themselves: an acknowledgement nobody recorded, and an event handled
    twice, must show as lost and duplicated (so that the zeros above mean something)."""
    ghost = f"crash-control-{uuid.uuid4().hex}"
    phantom = event_id(load.events.run, 0, 999_999)
    now = time.monotonic()
    twice = load.subscriber.handled[0]
    load.exchanges.acked.append((ghost, now, now))
    load.exchanges.sent.add(ghost)
    load.events.acked.append((phantom, now, now))
    load.events.sent.add(phantom)
    load.subscriber.handled.append(twice)
    try:
        found = check(city, load, ledger)
    finally:
        load.exchanges.acked.pop()
        load.exchanges.sent.discard(ghost)
        load.events.acked.pop()
        load.events.sent.discard(phantom)
        load.subscriber.handled.pop()
    assert found.lost_exchanges == [
        f"{ghost}: not in the consumer's records",
        f"{ghost}: not on the ledger as consumer",
        f"{ghost}: not in the provider's records",
        f"{ghost}: not on the ledger as provider",
    ]
    assert found.lost_events == [
        f"{phantom}: never handed to the subscriber",
        f"{phantom}: not in the publisher's records",
    ]
    assert found.duplicated_events == [f"{twice[1]}: handed over 2 times"]
    assert (found.lost, found.duplicated) == (2, 1)
    assert not found.duplicated_exchanges and not found.ledger and not found.out_of_order


def _figures(
    seed: int,
    load: Load,
    rounds: dict[str, int],
    recovery: dict[str, list[float]],
    verified: int,
    cut: int,
    final: Findings,
) -> None:
    done = sum(rounds.values())
    record(
        SECTION,
        "kill -9 rounds run",
        done,
        target=str(ROUNDS),
        ok=done == ROUNDS,
        note=f"seed {seed}",
    )
    for target in TARGETS:
        record(SECTION, f"rounds: {target}", rounds.get(target, 0))
    record(SECTION, "exchanges acknowledged", len(load.exchanges.acked))
    record(SECTION, "events acknowledged", len(load.events.acked))
    record(SECTION, "calls and publishes cut off by the kills", cut)
    for name, items in (
        ("exchanges lost", final.lost_exchanges),
        ("exchanges duplicated", final.duplicated_exchanges),
        ("events lost", final.lost_events),
        ("events duplicated", final.duplicated_events),
        ("events out of order", final.out_of_order),
        ("ledger entries not matching records", final.ledger),
    ):
        record(SECTION, name, ids(items), target="0", ok=not items)
    record(SECTION, "ledger verified", verified, "rounds", target=str(done), ok=verified == done)
    record(
        SECTION,
        "events published twice by a retry",
        final.republished,
        note="the backend retried an unanswered publish; stored and delivered once",
    )
    record(
        SECTION,
        "events redelivered after a crash",
        load.subscriber.redelivered,
        note="at least once: a node resumes from its acknowledged position",
    )
    for target in TARGETS:
        if recovery.get(target):
            worst, median = summary(recovery[target])
            record(SECTION, f"recovery max: {target}", worst, "s")
            record(SECTION, f"recovery median: {target}", median, "s")
