"""Limits across nodes at runtime: scale_queue changes them on every node through signals;
check_queue, producer rows and gossip checks show them with their use in Oban Pro's fields;
bad options are refused before anything is sent. Two real nodes (in this process, each with
its own worker processes) on one database."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest
from chaos.limit_workers import Hold, max_overlap, read_spans
from helpers import FAST_TIMINGS, job_row, query, wait_until
from limit_support import Sampler

from oban_pro import Oban
from oban_pro.errors import ValidationError
from oban_pro.payloads import decode_payload

FAST = dict(FAST_TIMINGS, processes=1, imports=["chaos.limit_workers"], shutdown_timeout=5.0)


def cluster_node(dsn: str, prefix: str, name: str, queues: dict) -> Oban:
    # One instance name for the cluster: signals address "<name>.<node>" or any node.
    return Oban(dsn=dsn, prefix=prefix, node=name, name=f"limits-{prefix}", queues=queues, **FAST)


async def all_completed(dsn: str, prefix: str, jobs: list, timeout: float = 60) -> None:
    ids = [j.id for j in jobs]
    await wait_until(
        lambda: all(job_row(dsn, prefix, i)["state"] == "completed" for i in ids),
        timeout=timeout,
        message=f"{len(ids)} jobs to complete",
    )


async def test_scale_queue_sets_and_removes_a_global_limit_on_every_node(
    oban_dsn, oban_prefix, tmp_path
):
    log = str(tmp_path / "spans")
    a = cluster_node(oban_dsn, oban_prefix, "a", {"api": 10})
    b = cluster_node(oban_dsn, oban_prefix, "b", {"api": 10})
    async with a, b:
        await a.scale_queue("api", global_limit=2)
        await wait_until(
            lambda: all(
                n.producers["api"].limits is not None
                and n.producers["api"].limits.global_limit.allowed == 2
                for n in (a, b)
            ),
            message="both nodes to apply global_limit 2",
        )
        assert a.producers["api"].limit == 10  # the local limit was not part of the signal
        with Sampler(oban_dsn, oban_prefix) as sampler:
            jobs = await a.enqueue_many([Hold.new({"log": log, "ms": 60}) for _ in range(24)])
            await all_completed(oban_dsn, oban_prefix, jobs)
        assert sampler.peak == 2 and max_overlap(read_spans(log)) <= 2

        # Removing it through one node's signal lifts it everywhere.
        await b.scale_queue("api", global_limit=None)
        await wait_until(
            lambda: all(n.producers["api"].limits is None for n in (a, b)),
            message="both nodes to drop the global limit",
        )
        jobs = await a.enqueue_many([Hold.new({"log": log, "ms": 400}) for _ in range(12)])
        with Sampler(oban_dsn, oban_prefix) as sampler:
            await all_completed(oban_dsn, oban_prefix, jobs)
        assert sampler.peak > 2


async def test_check_queue_producer_rows_and_gossip_show_limits_and_their_use(
    oban_dsn, oban_prefix, tmp_path
):
    queues = {"api": {"limit": 5, "global_limit": 3, "rate_limit": {"allowed": 50, "period": 60}}}
    log = str(tmp_path / "spans")
    gossip: list[dict] = []
    async with await psycopg.AsyncConnection.connect(oban_dsn, autocommit=True) as listener:
        await listener.execute(f'LISTEN "{oban_prefix}.oban_gossip"')
        async with cluster_node(oban_dsn, oban_prefix, "a", queues) as a:
            jobs = await a.enqueue_many(
                [Hold.new({"log": log, "ms": 30_000}) for _ in range(3)]
                + [Hold.new({"log": log, "ms": 10}) for _ in range(2)]
            )
            await wait_until(lambda: len(read_spans(log)) == 3, message="three jobs to start")

            async def a_check_with_use() -> bool:
                async for note in listener.notifies(timeout=1.0):
                    for check in decode_payload(note.payload).get("checks", []):
                        if check["queue"] == "api" and check["global_limit"].get("tracked"):
                            gossip.append(check)
                            return True
                return False

            await wait_until(a_check_with_use, timeout=20, message="a gossip check with use")
            info = a.check_queue("api")
            producer_meta = query(
                oban_dsn,
                f'SELECT meta FROM "{oban_prefix}".oban_producers WHERE queue = %s',
                ("api",),
            )[0][0]
            for job in jobs:
                await a.cancel_job(job)
    check = gossip[-1]
    assert check["local_limit"] == 5
    assert check["global_limit"]["allowed"] == 3
    assert check["global_limit"]["tracked"] == {"": {"count": 3}}
    assert check["rate_limit"]["allowed"] == 50 and check["rate_limit"]["period"] == 60
    assert check["rate_limit"]["windows"] == [{"curr_count": 3, "prev_count": 0}]
    assert info.meta["global_limit"]["allowed"] == 3
    assert info.meta["rate_limit"]["windows"][0]["curr_count"] == 3
    assert producer_meta["global_limit"]["allowed"] == 3
    assert producer_meta["rate_limit"]["allowed"] == 50
    assert producer_meta["rate_limit"]["period"] == 60


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"global_limit": -1}, "[api].global_limit"),
        ({"global_limit": 0}, "[api].global_limit"),
        ({"global_limit": 10**9}, "[api].global_limit"),
        ({"global_limit": True}, "[api].global_limit"),
        ({"rate_limit": {"allowed": 5}}, "[api].rate_limit.period"),
        ({"rate_limit": {"allowed": 5, "period": -2}}, "[api].rate_limit.period"),
        ({"rate_limit": {"allowed": 5, "period": 60, "burst": 2}}, "[api].rate_limit"),
        (
            {"global_limit": {"allowed": 2, "partition": {"fields": ["tenant"]}}},
            "[api].global_limit.partition.fields",
        ),
        (
            {"global_limit": {"allowed": 2, "partition": {"fields": ["worker"], "keys": ["id"]}}},
            "[api].global_limit.partition.keys",
        ),
        ({"global_limit": {"allowed": 2, "partition": {"keys": ["id"], "by": 1}}}, "partition"),
        ({"priority_limit": 3}, "priority_limit"),
    ],
)
async def test_bad_scale_options_are_refused_before_any_signal(
    oban_dsn, oban_prefix, options, field
):
    async with cluster_node(oban_dsn, oban_prefix, "a", {"api": 4}) as a:
        with pytest.raises(ValidationError) as error:
            await a.scale_queue("api", **options)
        assert field in str(error.value)
        await asyncio.sleep(0)  # nothing was sent, so nothing can arrive
        assert a.producers["api"].limits is None and a.producers["api"].limit == 4


async def test_a_bad_scale_signal_from_another_engine_changes_nothing(
    oban_dsn, oban_prefix, caplog
):
    queues = {"api": {"limit": 4, "global_limit": 2}}
    async with cluster_node(oban_dsn, oban_prefix, "a", queues) as a:
        before = a.producers["api"].limits
        payload = {"action": "scale", "queue": "api", "limit": 6, "global_limit": {"allowed": -5}}
        query(
            oban_dsn,
            "SELECT pg_notify(%s, %s)",
            (f"{oban_prefix}.oban_signal", json.dumps(payload)),
        )
        await wait_until(
            lambda: "ignored scale signal" in caplog.text, message="the bad signal to be logged"
        )
        assert a.producers["api"].limits is before and a.producers["api"].limit == 4
        # Oban Web's partition form ([["fields", [...]], ["keys", [...]]]) is understood.
        web = {
            "action": "scale",
            "queue": "api",
            "global_limit": {"allowed": 3, "partition": [["fields", ["args"]], ["keys", ["t"]]]},
        }
        query(oban_dsn, "SELECT pg_notify(%s, %s)", (f"{oban_prefix}.oban_signal", json.dumps(web)))
        await wait_until(
            lambda: a.producers["api"].limits.global_limit.allowed == 3,
            message="Oban Web's scale signal to apply",
        )
        assert a.producers["api"].limits.partition.keys == ("t",)
