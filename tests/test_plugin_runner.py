"""The plugin runner: every plugin in a loop of its own, leader-only ones skipped on followers,
errors logged and counted without ending the loop, trigger() runs a plugin at once."""

from __future__ import annotations

import asyncio

import psycopg
from plugin_support import FakeNode

from oban_pro.coordinator.plugin_runner import PluginRunner
from oban_pro.plugins.base import Plugin


class Counting:
    def __init__(self, name: str, *, leader_only: bool, interval: float = 0.01,
                 fail_with: BaseException | None = None) -> None:  # fmt: skip
        self.name, self.leader_only, self.interval = name, leader_only, interval
        self.fail_with = fail_with
        self.steps = 0
        self.stepped = asyncio.Event()

    async def step(self, now=None) -> object:
        self.steps += 1
        self.stepped.set()
        if self.fail_with is not None:
            raise self.fail_with
        return None


async def wait_steps(plugin: Counting, n: int) -> None:
    async def enough() -> None:
        while plugin.steps < n:
            plugin.stepped.clear()
            await plugin.stepped.wait()

    await asyncio.wait_for(enough(), timeout=10)


async def test_leader_only_plugins_run_only_while_leading() -> None:
    node = FakeNode(is_leader=False)
    everywhere = Counting("everywhere", leader_only=False)
    leader = Counting("leader", leader_only=True)
    assert isinstance(leader, Plugin)
    runner = PluginRunner([everywhere, leader], node)
    runner.start()
    try:
        await wait_steps(everywhere, 3)
        assert leader.steps == 0
        node.is_leader = True
        await wait_steps(leader, 2)
    finally:
        await runner.stop()


async def test_a_failing_plugin_is_counted_and_keeps_running() -> None:
    errors: list[str] = []
    db = Counting("db", leader_only=False, fail_with=psycopg.OperationalError("server gone"))
    bug = Counting("bug", leader_only=False, fail_with=ValueError("a bug"))
    fine = Counting("fine", leader_only=False)
    runner = PluginRunner([db, bug, fine], FakeNode(), on_error=errors.append)
    runner.start()
    try:
        await wait_steps(db, 3)
        await wait_steps(bug, 3)
        await wait_steps(fine, 3)
    finally:
        await runner.stop()
    assert set(errors) == {"db"}  # database errors are counted; the bug is logged


async def test_trigger_runs_a_plugin_now() -> None:
    slow = Counting("slow", leader_only=False, interval=3600)
    runner = PluginRunner([slow], FakeNode())
    runner.start()
    try:
        await wait_steps(slow, 1)  # the first round runs at start
        runner.trigger("slow")
        await wait_steps(slow, 2)
    finally:
        await runner.stop()


class ClockHeld(Counting):
    """A plugin that says when it runs next (as cron does: the next minute boundary)."""

    def __init__(self) -> None:
        super().__init__("clock", leader_only=False, interval=3600.0)
        self.asked = 0

    def seconds_to_next_run(self) -> float:
        self.asked += 1
        return 0.01


async def test_a_plugin_held_to_the_clock_waits_for_its_next_run_before_each_step() -> None:
    """Its interval (an hour here) is not used: the loop asks before every step, the first
    one included, and runs it when that time comes."""
    plugin = ClockHeld()
    runner = PluginRunner([plugin], FakeNode())
    runner.start()
    try:
        await wait_steps(plugin, 3)
    finally:
        await runner.stop()
    assert plugin.asked >= plugin.steps >= 3
