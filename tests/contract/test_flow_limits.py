"""Concurrency and rate limits inside the claim, on every database (the claim verbs, no processes)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue, enqueue_many
from pending_jobs.limits import parse
from pending_jobs.models import utc
from pending_jobs.schema import limits as L
from pending_jobs.schema import pending_jobs as J
from pending_jobs.store import LimitedStore, Store
from pending_jobs.store.admission import STAMP_AHEAD
from pending_jobs.store.columns import CLAIM_COLUMNS
from pending_jobs.store.limited import BUSY_RETRY
from tests.conftest import finish, rows, scalar


def limited(store: Store, queues: dict | None = None, tasks: dict | None = None) -> LimitedStore:
    return LimitedStore(store, parse(queues or {}, tasks or {}))


def keyed(engine: sa.Engine, keys: list[str], task: str = "noop", queue: str = "default") -> list[int]:
    return enqueue_many(engine, [{"task": task, "payload": {"n": n}, "queue": queue, "concurrency_key": key}
                                 for n, key in enumerate(keys)])


def test_a_key_limit_admits_that_many_per_key_and_the_rest_wait_unattempted(store: Store, engine: sa.Engine) -> None:
    ids = keyed(engine, ["a"] * 5 + ["b"] * 5)
    free = enqueue(engine, "noop", {})  # no key: no per-key limit
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 2}})

    first = jobs.claim("default", 100, "runner", 60)
    assert sorted(job.id for job in first.jobs) == sorted([ids[0], ids[1], ids[5], ids[6], free])
    assert jobs.claim("default", 100, "runner-2", 60).jobs == []
    waiting = rows(engine, "SELECT attempts, status FROM pending_jobs WHERE id IN (:x, :y)", x=ids[2], y=ids[9])
    assert [tuple(row) for row in waiting] == [(0, "pending"), (0, "pending")]

    finish(store, first.token, succeeded=[(ids[0], None)])  # a slot of `a` comes free with the outcome
    again = jobs.claim("default", 100, "runner-2", 60)
    assert [job.id for job in again.jobs] == [ids[2]]


def test_a_limit_of_one_runs_a_keys_jobs_in_priority_run_at_id_order(store: Store, engine: sa.Engine) -> None:
    low = enqueue(engine, "noop", {}, concurrency_key="k")
    high = enqueue(engine, "noop", {}, concurrency_key="k", priority=5)
    later = enqueue(engine, "noop", {}, concurrency_key="k")
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 1}})
    order = []
    for _ in range(3):
        claim = jobs.claim("default", 10, "runner", 60)
        assert len(claim.jobs) == 1
        order.append(claim.jobs[0].id)
        assert jobs.claim("default", 10, "runner", 60).jobs == []  # the key's slot is taken
        finish(store, claim.token, succeeded=[(claim.jobs[0].id, None)])
    assert order == [high, low, later]


def test_a_burst_of_one_key_does_not_hide_other_keys(store: Store, engine: sa.Engine) -> None:
    keyed(engine, ["busy"] * 30)
    other = keyed(engine, ["quiet"] * 2)
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 1}})
    assert len(jobs.claim("default", 10, "runner", 60).jobs) == 1  # only `busy` in the first 10 due rows
    second = jobs.claim("default", 10, "runner", 60)
    assert [job.id for job in second.jobs] == [other[0]]  # `busy` is full: left out of the read


def test_max_running_caps_a_queue_and_other_queues_are_untouched(store: Store, engine: sa.Engine) -> None:
    enqueue_many(engine, [{"task": "noop", "queue": "mail"} for _ in range(5)])
    enqueue_many(engine, [{"task": "noop", "queue": "other"} for _ in range(5)])
    jobs = limited(store, queues={"mail": {"max_running": 3}})
    assert len(jobs.claim("mail", 100, "r", 60).jobs) == 3
    assert jobs.claim("mail", 100, "r", 60).jobs == []
    assert len(jobs.claim("other", 100, "r", 60).jobs) == 5  # not limited: the plain claim


def test_a_cap_another_runner_is_claiming_under_is_looked_at_again_shortly(
        backend: str, store: Store, engine: sa.Engine) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite locks the whole database, not a row: a second claim waits for the first")
    enqueue_many(engine, [{"task": "noop", "queue": "mail"} for _ in range(3)])
    jobs = limited(store, queues={"mail": {"max_running": 2}})
    assert len(jobs.claim("mail", 1, "r", 60).jobs) == 1  # creates the cap's row
    with engine.connect() as other, other.begin():  # another runner holds the cap's row mid-claim
        other.execute(sa.text("SELECT name FROM pending_job_limits WHERE name = 'queue:mail' FOR UPDATE"))
        busy = jobs.claim("mail", 100, "r", 60)
        assert busy.jobs == [] and busy.retry_in == BUSY_RETRY
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending' AND attempts = 0") == 2
    assert len(jobs.claim("mail", 100, "r", 60).jobs) == 1  # the cap's room: 2, one runs


def test_a_caps_room_counted_with_its_lock_sees_the_jobs_its_last_holder_started(
        backend: str, store: Store, engine: sa.Engine) -> None:
    """MariaDB counts a cap's room in the statement that locks the cap's row (lock_cap): were its snapshot
    taken before the lock was had, a claim right after another's commit would miss that claim's jobs and
    pass the cap. The claim skips a held row; made to wait for it instead, the same statement sees them."""
    if backend != "mysql":
        pytest.skip("MariaDB/MySQL alone count the room with the lock; elsewhere the claim statement counts it")
    enqueue_many(engine, [{"task": "noop", "queue": "mail"} for _ in range(5)])
    jobs = limited(store, queues={"mail": {"max_running": 10}})
    assert len(jobs.claim("mail", 1, "r", 60).jobs) == 1  # creates the cap's row and the statement
    waiting = jobs.sql.cached(("cap_lock",), lambda: pytest.fail("no statement locks the cap")).with_for_update()
    seen: list[int] = []
    waiter: list[int] = []

    def count() -> None:
        with engine.connect() as conn, conn.begin():
            waiter.append(conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())
            seen.append(conn.execute(waiting, {"claim_queue": "mail", "cap_limit": 10,
                                               "cap_name": "queue:mail"}).scalar_one())

    with engine.connect() as holder, holder.begin():
        holder.execute(sa.text("SELECT name FROM pending_job_limits WHERE name = 'queue:mail' FOR UPDATE"))
        thread = threading.Thread(target=count)
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (waiter and holder.execute(sa.text(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = :id "
                "AND trx_state = 'LOCK WAIT'"), {"id": waiter[0]}).scalar_one()):
            time.sleep(0.01)
        holder.execute(sa.text("UPDATE pending_jobs SET status = 'running', attempts = 1 "
                               "WHERE queue = 'mail' AND status = 'pending' LIMIT 2"))
    thread.join(30)
    assert seen == [10 - 3]  # the job claimed first, and the two the holder started


def test_a_queue_key_limit_counts_per_key_within_the_queue(store: Store, engine: sa.Engine) -> None:
    keyed(engine, ["u1"] * 3 + ["u2"] * 3, queue="mail")
    jobs = limited(store, queues={"mail": {"concurrency_limit": 1}})
    claim = jobs.claim("mail", 100, "r", 60)
    assert sorted(job.id for job in claim.jobs) == [1, 4]  # the first of each key
    assert jobs.claim("mail", 100, "r", 60).jobs == []


def test_rescue_gives_the_slots_of_a_dead_runner_back(store: Store, engine: sa.Engine) -> None:
    ids = keyed(engine, ["k"] * 3)
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 2}})
    assert len(jobs.claim("default", 10, "dies", 60).jobs) == 2
    assert jobs.claim("default", 10, "alive", 60).jobs == []
    with engine.begin() as conn:  # the lease runs out: the runner died holding both slots
        conn.execute(sa.text("UPDATE pending_jobs SET lease_expires_at = NULL WHERE status = 'running'"))
    assert store.rescue_expired().pending == 2
    again = jobs.claim("default", 10, "alive", 60)
    assert sorted(job.id for job in again.jobs) == ids[:2]  # back in order, their attempt kept
    assert {job.attempt for job in again.jobs} == {2}


def test_released_jobs_give_their_slots_back(store: Store, engine: sa.Engine) -> None:
    ids = keyed(engine, ["k"] * 2)
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 1}})
    claim = jobs.claim("default", 10, "r", 60)
    assert store.release(claim.token, [ids[0]]) == (1, 0)
    assert [job.id for job in jobs.claim("default", 10, "r", 60).jobs] == [ids[0]]


def test_a_rate_limit_starts_jobs_from_a_token_bucket_and_says_when_to_look_again(
        store: Store, engine: sa.Engine) -> None:
    enqueue_many(engine, [{"task": "noop"} for _ in range(10)])
    # A bucket of 2 tokens, one more every 3 s: the second claim comes well within that on a loaded machine.
    jobs = limited(store, tasks={"noop": {"rate_limit": "20/m"}})
    first = jobs.claim("default", 100, "r", 60)
    assert len(first.jobs) == 2
    empty = jobs.claim("default", 100, "r", 60)
    assert empty.jobs == [] and empty.retry_in is not None and 0 < empty.retry_in <= 3
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending' AND attempts = 0") == 8
    tokens = scalar(engine, "SELECT tokens FROM pending_job_limits WHERE name = 'rate:task:noop'")
    assert tokens < 1


class SlowLimitedStore(LimitedStore):
    """A claim that spends 0.4 s between counting its tokens and marking its jobs, as one on a loaded
    machine does (the pause lies inside the claim's transaction, the bucket's row locked)."""

    def _heads(self, conn: sa.Connection, room: dict) -> dict[str, set[int]]:
        time.sleep(0.4)
        return super()._heads(conn, room)


def moment(value: object) -> object:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite: text, as written


def test_the_tokens_that_come_while_a_claim_runs_stay_in_the_bucket(store: Store, engine: sa.Engine) -> None:
    """They were lost where the database clock is read per statement (MariaDB, SQLite): the bucket was
    written back as refilled at the write, not at the clock its tokens were counted by, and 4 runners at
    50/s started 34/s on a loaded machine."""
    enqueue_many(engine, [{"task": "noop"} for _ in range(5)])
    limits = parse({"default": {"rate_limit": "20/5s"}}, {})  # 4 tokens a second, a bucket of 2
    assert len(LimitedStore(store, limits).claim("default", 1, "r", 60).jobs) == 1  # 1 token left
    slow = SlowLimitedStore(store, limits).claim("default", 1, "r", 60)  # takes that token; 1.6 come meanwhile
    assert len(slow.jobs) == 1
    started = scalar(engine, "SELECT started_at FROM pending_jobs WHERE id = :id", id=slow.jobs[0].id)
    refilled = scalar(engine, "SELECT refilled_at FROM pending_job_limits WHERE name = 'rate:queue:default'")
    assert moment(refilled) == moment(started)  # the job took its token at the instant its start says
    assert len(LimitedStore(store, limits).claim("default", 1, "r", 60).jobs) == 1  # one came during the pause


def _stamp_bucket(engine: sa.Engine, tokens: float, ahead: dt.timedelta) -> dt.datetime:
    """The queue's rate bucket holding `tokens`, stamped `ahead` of this machine's clock (naive UTC, as the store
    binds); the stamp, aware."""
    stamp = dt.datetime.now(dt.UTC).replace(tzinfo=None) + ahead
    with engine.begin() as conn:
        conn.execute(sa.update(L).where(L.c.name == "rate:queue:default").values(tokens=tokens, refilled_at=stamp))
    return stamp.replace(tzinfo=dt.UTC)


def _bucket_stamp(engine: sa.Engine) -> dt.datetime | None:
    with engine.connect() as conn:
        return utc(conn.execute(sa.select(L.c.refilled_at).where(L.c.name == "rate:queue:default")).scalar_one())


def test_a_bucket_stamped_after_the_claims_clock_is_not_set_back(store: Store, engine: sa.Engine) -> None:
    """PostgreSQL's clock is the claim's transaction start: a claim that began before another but locked the
    bucket after it wrote its stamp set that stamp back, and the next claim was given the tokens of the
    interval between a second time (4 runners at 50/s: 54 starts in one second against 55 allowed)."""
    enqueue_many(engine, [{"task": "noop"} for _ in range(4)])
    limits = parse({"default": {"rate_limit": "20/5s"}}, {})  # 4 tokens a second, a bucket of 2
    assert len(LimitedStore(store, limits).claim("default", 1, "r", 60).jobs) == 1  # the bucket's row now exists
    stamp = _stamp_bucket(engine, 1, dt.timedelta(seconds=2))  # as if written by a claim 2 s younger

    assert len(LimitedStore(store, limits).claim("default", 5, "r", 60).jobs) == 1  # its one token, no refill
    after = _bucket_stamp(engine)
    assert after is not None and after >= stamp
    assert LimitedStore(store, limits).claim("default", 5, "r", 60).jobs == []  # nothing refilled meanwhile


def test_a_bucket_stamped_far_ahead_starts_afresh_instead_of_holding_its_queue(store: Store,
                                                                                engine: sa.Engine) -> None:
    """A stamp no claim could have written (the database clock stepped back an hour, a row set by hand)
    held every token back until the clock reached it."""
    enqueue_many(engine, [{"task": "noop"} for _ in range(4)])
    limits = parse({"default": {"rate_limit": "20/5s"}}, {})
    assert len(LimitedStore(store, limits).claim("default", 1, "r", 60).jobs) == 1
    _stamp_bucket(engine, 0, dt.timedelta(hours=1))

    assert len(LimitedStore(store, limits).claim("default", 5, "r", 60).jobs) == 2  # a full bucket: its burst
    after = _bucket_stamp(engine)
    assert after is not None and after < dt.datetime.now(dt.UTC) + dt.timedelta(seconds=STAMP_AHEAD)


def test_a_drain_run_keeps_to_the_limits_and_finishes_everything(run: object, engine: sa.Engine,
                                                                 store: Store) -> None:
    ids = keyed(engine, [f"k{n % 3}" for n in range(12)], task="echo")
    report = run(queue_tables={"default": {"max_running": 2, "rate_limit": "200/s"}},  # type: ignore[operator]
                 declared_tasks={"echo": {"concurrency_limit": 1}})
    assert report.succeeded == len(ids)
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'") == len(ids)


def test_jobs_of_tasks_without_a_limit_are_claimed_beside_limited_ones(store: Store, engine: sa.Engine) -> None:
    limited_ids = keyed(engine, ["k"] * 3)
    free = enqueue_many(engine, [{"task": "echo", "payload": {"n": n}} for n in range(2)])
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 1}})
    # (On PostgreSQL the first claim takes the jobs without a limit at once and the key's job once its
    # limit's row exists: by the next claim.)
    claimed = [*jobs.claim("default", 100, "runner", 60).jobs, *jobs.claim("default", 100, "runner", 60).jobs]
    assert sorted(job.id for job in claimed) == sorted([limited_ids[0], *free])
    assert {job.attempt for job in claimed} == {1}
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'running' AND attempts = 1") == 3
    assert jobs.claim("default", 100, "runner", 60).jobs == []


def test_stores_with_different_limits_on_one_database_keep_their_own(store: Store, engine: sa.Engine) -> None:
    """Statements are built once per database (the dialect's cache): one store's limits must not leak
    into another's (they once did on PostgreSQL, through the one-statement claim's cache key)."""
    enqueue(engine, "echo", {})
    assert len(limited(store, tasks={"other": {"concurrency_limit": 1}}).claim("default", 10, "a", 60).jobs) == 1
    keyed(engine, ["k"] * 3)
    mine = limited(store, tasks={"noop": {"concurrency_limit": 1}})
    claimed = [*mine.claim("default", 10, "b", 60).jobs, *mine.claim("default", 10, "b", 60).jobs]
    assert len(claimed) == 1


def keyed_by_sql(engine: sa.Engine, keys: list[str], queue: str = "default") -> list[int]:
    """Jobs written with plain SQL, as a producer in another language may: the Python API and the PHP
    client refuse a key with edge whitespace, the table does not."""
    with engine.begin() as conn:
        return [conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, queue, concurrency_key) VALUES "
                                     "('noop', :payload, :queue, :key) RETURNING id"),
                             {"payload": json.dumps({"n": n}), "queue": queue, "key": key}).scalar_one()
                for n, key in enumerate(keys)]


def test_keys_and_queues_that_differ_only_by_trailing_spaces_each_get_a_slot(store: Store, engine: sa.Engine) -> None:
    # MariaDB's utf8mb4_bin compares 'user:1' and 'user:1 ' as equal (PAD SPACE): the second key's scope row
    # was never created under its own name, and its jobs waited for ever while a drain run kept looking.
    # A `[queue."k "]` table is refused (test_flow_config.py); jobs a producer put in 'k ' by plain SQL run.
    first = keyed(engine, ["user:1"])
    jobs = limited(store, queues={"k": {"concurrency_limit": 1}},
                   tasks={"noop": {"concurrency_limit": 1}})
    claim = jobs.claim("default", 10, "runner", 60)
    assert [job.id for job in claim.jobs] == first
    finish(store, claim.token, succeeded=[(first[0], None)])
    spaced = keyed_by_sql(engine, ["user:1 "])
    queued = keyed_by_sql(engine, ["x"], queue="k ")
    assert [job.id for job in jobs.claim("default", 10, "runner", 60).jobs] == spaced
    assert [job.id for job in jobs.claim("k ", 10, "runner", 60).jobs] == queued


def test_keys_differing_only_by_trailing_spaces_pending_together_all_run(store: Store, engine: sa.Engine) -> None:
    # On MariaDB the two compare equal in SQL: they count each other's running job, so they take turns there
    # (elsewhere both start at once); neither may wait for ever, nor run two of one key at once.
    both = keyed_by_sql(engine, ["user:1", "user:1 ", "user:1", "user:1 "])
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 1}})
    ran: list[int] = []
    for _ in range(8):
        claim = jobs.claim("default", 10, "runner", 60)
        keys = [key for job in claim.jobs for key in rows(engine, "SELECT concurrency_key FROM pending_jobs "
                                                                  "WHERE id = :id", id=job.id)[0]]
        assert len(keys) == len(set(keys)), keys  # at most one running per key
        ran += [job.id for job in claim.jobs]
        finish(store, claim.token, succeeded=[(job.id, None) for job in claim.jobs])
    assert sorted(ran) == both


def test_a_mark_that_misses_a_locked_row_hands_out_only_the_jobs_it_marked(store: Store, engine: sa.Engine) -> None:
    # When the mark changes fewer rows than it was given, the jobs are read back by the claim's token. On
    # PostgreSQL the same claim has marked the jobs without a limit under that token already, and returned
    # them: read back again they were handed out twice (one job, two workers).
    ids = enqueue_many(engine, [{"task": "noop", "payload": {"n": n}} for n in range(3)])
    jobs = limited(store, tasks={"noop": {"concurrency_limit": 5}})
    read = sa.select(*CLAIM_COLUMNS).where(J.c.id.in_(ids)).order_by(J.c.id)
    token = "t" * 32

    def mark(conn: sa.Connection) -> list[int]:
        first, second, third = conn.execute(read).all()
        jobs._mark(conn, [first], token, "runner", 60)  # an earlier statement of the same claim
        conn.execute(sa.delete(J).where(J.c.id == third.id))  # gone before the mark (a guard: the claim holds its rows)
        return [job.id for job in jobs._mark(conn, [second, third], token, "runner", 60)]

    assert store.transaction(mark) == [ids[1]]


@pytest.mark.parametrize("queues, tasks, key", [
    ({"default": {"max_running": 5}}, {}, None),        # the capped claim
    ({"default": {"concurrency_limit": 1}}, {}, "k"),   # a queue's per-key limit
    ({}, {"noop": {"concurrency_limit": 1}}, "k"),      # a task's per-key limit
    ({"default": {"rate_limit": "100/s"}}, {}, None),   # a queue's rate
    ({}, {"noop": {"rate_limit": "100/s"}}, None),      # a task's rate
])
def test_limit_rows_deleted_while_a_run_serves_are_made_again(store: Store, engine: sa.Engine, queues: dict,
                                                               tasks: dict, key: str | None) -> None:
    # The table keeps a row per key ever limited; an operator clearing it must not stop a serving run's claims
    # for good: the run took every row it had made once and could not lock for one another runner held.
    jobs = limited(store, queues, tasks)  # one per run
    first = enqueue(engine, "noop", {}, concurrency_key=key)
    claim = jobs.claim("default", 10, "r", 60)
    assert [job.id for job in claim.jobs] == [first]
    finish(store, claim.token, succeeded=[(first, None)])
    with engine.begin() as conn:
        conn.execute(sa.delete(L))
    second = enqueue(engine, "noop", {}, concurrency_key=key)
    started = []
    for _ in range(3):  # the first claim may find the rows gone and make them; the next one starts the job
        started += [job.id for job in jobs.claim("default", 10, "r", 60).jobs]
    assert started == [second]
    assert scalar(engine, "SELECT COUNT(*) FROM pending_job_limits") >= 1


def test_an_empty_concurrency_key_written_by_sql_is_a_key_and_keeps_its_limit(store: Store, engine: sa.Engine) -> None:
    # enqueue() refuses '', but the table is the contract: a PHP or SQL producer may write it (a user id that was
    # empty). It was taken for no key, and every such job ran at once whatever the concurrency_limit.
    with engine.begin() as conn:
        for n in range(3):
            conn.execute(sa.insert(J).values(task="noop", payload={"n": n}, concurrency_key=""))
    for queues, tasks in (({"default": {"concurrency_limit": 1}}, {}), ({}, {"noop": {"concurrency_limit": 1}})):
        jobs = limited(store, queues, tasks)
        claim = jobs.claim("default", 10, "r", 60)
        assert len(claim.jobs) == 1
        assert jobs.claim("default", 10, "r2", 60).jobs == []  # the key's one slot is taken
        assert store.release(claim.token, [claim.jobs[0].id]) == (1, 0)


def test_a_queue_out_of_tokens_says_when_to_look_again_only_while_a_job_is_due(store: Store,
                                                                               engine: sa.Engine) -> None:
    """A drain (`run --drain`) stops when nothing is due; a queue whose rate bucket was empty said "look again in a
    minute" for a job scheduled next year, and the drain ran on until its runtime was spent."""
    enqueue(engine, "noop")
    enqueue(engine, "noop", run_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
    jobs = limited(store, queues={"default": {"rate_limit": "1/m"}})
    assert len(jobs.claim("default", 10, "r", 60).jobs) == 1  # the bucket's one token

    nothing_due = jobs.claim("default", 10, "r", 60)

    assert nothing_due.jobs == [] and nothing_due.retry_in is None, nothing_due
    enqueue(engine, "noop")
    due_again = jobs.claim("default", 10, "r", 60)
    assert due_again.jobs == [] and due_again.retry_in is not None and 0 < due_again.retry_in <= 60, due_again
