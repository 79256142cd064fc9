"""Placement and the ledger, without processes: which child a job goes to, and who waits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oban_pro.pool.ledger import Ledger, PoolJob
from oban_pro.pool.messages import Run
from oban_pro.pool.placement import Placement
from oban_pro.pool.processes import DRAINING, READY


@dataclass(eq=False)
class FakeChild:
    """The attributes of ChildProcess that placement and the ledger read and write."""

    name: str
    state: str = READY
    jobs: dict[int, Any] = field(default_factory=dict)
    isolated: bool = False
    reserved: bool = False

    @property
    def open_to_jobs(self) -> bool:
        return self.state is READY and not self.isolated and not self.reserved


def job(job_id: int, queue: str = "q", isolated: bool = False) -> PoolJob:
    return PoolJob(Run(job_id=job_id, worker="w", args=b"{}", queue=queue), isolated, 0.0)


def setup(n: int = 2) -> tuple[list[FakeChild], Placement, Ledger]:
    children = [FakeChild(f"c{i}") for i in range(n)]
    return children, Placement(lambda: children), Ledger()  # type: ignore[arg-type,return-value]


def place(ledger: Ledger, placement: Placement, j: PoolJob) -> Any:
    ledger.add(j)
    child = placement.choose(j)
    if child is not None:
        ledger.place(j, child)
    return child


def test_least_loaded_child_gets_the_job_so_each_job_has_a_process_while_it_can() -> None:
    children, placement, ledger = setup(3)
    chosen = [place(ledger, placement, job(i)) for i in range(3)]
    assert {c.name for c in chosen} == {"c0", "c1", "c2"}
    chosen += [place(ledger, placement, job(i)) for i in range(3, 9)]
    assert sorted(len(c.jobs) for c in children) == [3, 3, 3]
    assert ledger.count("q") == 9 and ledger.count("other") == 0


def test_a_draining_child_gets_nothing() -> None:
    children, placement, ledger = setup(2)
    children[0].state = DRAINING
    assert {place(ledger, placement, job(i)).name for i in range(4)} == {"c1"}


def test_an_isolated_job_needs_an_empty_child_and_then_owns_it() -> None:
    children, placement, ledger = setup(2)
    place(ledger, placement, job(1))
    iso = job(2, isolated=True)
    assert place(ledger, placement, iso).name == "c1"
    assert children[1].isolated
    # nothing else goes beside it
    assert place(ledger, placement, job(3)).name == "c0"
    ledger.remove(2)
    assert not children[1].isolated and not children[1].jobs


def place_on_deck(ledger: Ledger, placement: Placement, j: PoolJob) -> Any:
    """What the pool does: a job placed on a busy child is on deck behind its one job."""
    ledger.add(j)
    child = placement.choose(j)
    if child is not None:
        behind = next(iter(child.jobs), 0) if j.isolated else 0
        ledger.place(j, child, behind=behind)
    return child


def test_an_isolated_job_with_no_empty_child_goes_on_deck_behind_an_isolated_one() -> None:
    children, placement, ledger = setup(2)
    place(ledger, placement, job(1))  # c0 runs a regular job: nothing goes on deck there
    running = job(2, isolated=True)
    assert place_on_deck(ledger, placement, running).name == "c1"
    deck = job(3, isolated=True)
    assert place_on_deck(ledger, placement, deck).name == "c1"
    assert deck.behind == 2 and ledger.on_deck == 1
    # one deep: a third isolated job waits; a regular one still never joins c1
    assert place_on_deck(ledger, placement, job(4, isolated=True)) is None
    assert place_on_deck(ledger, placement, job(5)).name == "c0"
    # the job ahead ends: the one on deck keeps the child isolated, and is on deck no more
    # once it starts (the pool takes it off when the child says so)
    ledger.remove(2)
    assert children[1].isolated and list(children[1].jobs) == [3]
    ledger.off_deck(deck)
    assert deck.behind == 0 and ledger.on_deck == 0
    ledger.remove(3)
    assert not children[1].isolated


def test_nothing_goes_on_deck_behind_a_job_being_stopped_or_in_a_draining_child() -> None:
    children, placement, ledger = setup(2)
    first, second = job(1, isolated=True), job(2, isolated=True)
    place_on_deck(ledger, placement, first)
    place_on_deck(ledger, placement, second)
    first.stop_reason = "timeout"
    children[1].state = DRAINING
    assert place_on_deck(ledger, placement, job(3, isolated=True)) is None
    # leaving its child takes a job off the deck too (its child died, or it was given back)
    children[1].state = READY
    deck = job(4, isolated=True)
    assert place_on_deck(ledger, placement, deck).name == "c1"
    ledger.unplace(deck)
    assert deck.behind == 0 and ledger.on_deck == 0 and list(children[1].jobs) == [2]


def test_a_waiting_isolated_job_reserves_a_child_and_lets_regular_jobs_pass() -> None:
    children, placement, ledger = setup(2)
    for i in range(4):
        place(ledger, placement, job(i))  # two per child
    iso = job(10, isolated=True)
    ledger.add(iso)
    placement.wait(iso)
    blocked: set[tuple[str, bool]] = set()
    assert placement.next_placeable(blocked) is None
    reserved = [c for c in children if c.reserved]
    assert len(reserved) == 1  # it empties for the isolated job
    other = next(c for c in children if not c.reserved)
    regular = job(11)
    assert place(ledger, placement, regular) is other  # regular jobs keep flowing elsewhere
    for job_id in list(reserved[0].jobs):
        ledger.remove(job_id)
    found = placement.next_placeable(set())
    assert found is not None and found[0] is iso and found[1] is reserved[0]
    assert not reserved[0].reserved


def test_waiting_lines_are_served_in_turn_between_queues() -> None:
    children, placement, ledger = setup(1)
    children[0].state = DRAINING  # nothing can be placed: everything waits
    for i in range(3):
        for queue in ("a", "b"):
            j = job(i * 10 + (queue == "b"), queue=queue)
            ledger.add(j)
            placement.wait(j)
    assert placement.waiting_in("a") == placement.waiting_in("b") == 3
    assert placement.waiting_in("c") == 0
    children[0].state = READY
    order = []
    while (found := placement.next_placeable(set())) is not None:
        order.append(found[0].run.queue)
        ledger.place(found[0], found[1])
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert placement.waiting_in("a") == 0


def test_the_ledger_refuses_a_job_twice_and_forgets_it_everywhere() -> None:
    children, placement, ledger = setup(1)
    j = job(1)
    place(ledger, placement, j)
    try:
        ledger.add(job(1))
    except ValueError as exc:
        assert "already in the pool" in str(exc)
    else:
        raise AssertionError("a second add of job 1 was accepted")
    assert ledger.remove(1) is j and 1 not in children[0].jobs and ledger.count("q") == 0
    assert ledger.remove(1) is None
