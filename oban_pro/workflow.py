"""Workflows: jobs that wait for other jobs (sequence, fan-out, fan-in, sub-workflows).

Build a :class:`Workflow` with named steps and their dependencies, then insert it atomically
with ``oban.enqueue_many(workflow)`` (or ``Client.enqueue_many``)::

    workflow = (
        Workflow(name="report")
        .add("fetch", Fetch.new({"url": url}))
        .add_many("chunks", [Chunk.new({"n": n}) for n in range(8)], deps="fetch")
        .add("total", Total.new({}), deps="chunks")
    )
    await oban.enqueue_many(workflow)

A step with dependencies is inserted ``suspended`` and is never fetched; the statement that
acks its last dependency makes it ``available`` (or ``scheduled`` when it was given a
``scheduled_at``) in the same transaction. A dependency that ends ``cancelled`` or
``discarded`` (or is deleted) cancels the steps waiting for it, with an error naming it, and the
cancellation cascades — unless the waiting step was added with ``ignore_cancelled``,
``ignore_discarded`` or ``ignore_deleted``, which count that outcome as done.

Each job carries Oban Pro's meta keys (``workflow_id``, ``workflow_name``, ``name``, ``deps``,
``sup_workflow_id``, ``ignore_*``), so Oban Web draws the graph, plus oban_pro's own keys,
prefixed ``wf_``: ``wf_next`` (ids of the jobs waiting for this one, until it has told them),
``wf_sent`` (the same ids, once told), ``wf_wait`` (how many jobs this one still waits for),
``wf_need`` (how many it waited for at insert) and ``wf_subs`` (the ids of the sub-workflows a
dependency name stands for). Everything here is validated before any SQL runs: a bad workflow
raises :class:`~oban_pro.errors.WorkflowValidationError` naming the step and changes nothing.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError, WorkflowValidationError
from .job import Job

__all__ = ["Workflow", "WorkflowJob"]

#: Longest step or workflow name accepted (Oban Web shows them in a graph).
MAX_NAME = 255

Deps = str | Sequence[str] | None

_IGNORE_OPTIONS = ("ignore_cancelled", "ignore_discarded", "ignore_deleted")


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    deps: tuple[str, ...]
    job: Job | None = None  # a plain step
    sub: Workflow | None = None  # add_many / add_workflow
    ignore: tuple[tuple[str, bool], ...] = ()


@dataclass(slots=True)
class WorkflowJob:
    """One job of a flattened workflow: the job and the positions of the jobs it waits for."""

    job: Job
    upstream: list[int] = field(default_factory=list)


class Workflow:
    """A graph of named steps, inserted at once by ``enqueue_many(workflow)``.

    ``name`` (alias ``workflow_name``) labels the workflow (meta ``workflow_name``);
    ``workflow_id`` defaults to a random UUID. ``ignore_cancelled``, ``ignore_discarded`` and
    ``ignore_deleted`` given here are the default of every step added later.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        workflow_id: str | None = None,
        workflow_name: str | None = None,
        ignore_cancelled: bool = False,
        ignore_discarded: bool = False,
        ignore_deleted: bool = False,
    ) -> None:
        if name is not None and workflow_name is not None and name != workflow_name:
            raise ValidationError("workflow_name", "give name= or workflow_name=, not both")
        label = name if name is not None else workflow_name
        if label is not None:
            _check_name("workflow", "name", label)
        self.name: str | None = label
        self.id: str = str(uuid.uuid4()) if workflow_id is None else workflow_id
        _check_name(self.id, "workflow_id", self.id)
        self._defaults = {
            "ignore_cancelled": _check_flag("workflow", "ignore_cancelled", ignore_cancelled),
            "ignore_discarded": _check_flag("workflow", "ignore_discarded", ignore_discarded),
            "ignore_deleted": _check_flag("workflow", "ignore_deleted", ignore_deleted),
        }
        self._steps: dict[str, _Step] = {}
        self._included = False  # added to another workflow with add_workflow

    # -- building ---------------------------------------------------------------------------

    def add(
        self,
        name: str,
        job: Job,
        *,
        deps: Deps = None,
        ignore_cancelled: bool | None = None,
        ignore_discarded: bool | None = None,
        ignore_deleted: bool | None = None,
    ) -> Workflow:
        """Add ``job`` as step ``name``, to run once every step in ``deps`` has completed."""
        if not isinstance(job, Job):
            raise WorkflowValidationError(
                str(name), "job", f"expected a Job (from Worker.new(...)), got {job!r:.80}"
            )
        if job.unique:
            raise WorkflowValidationError(
                str(name), "unique", "unique jobs cannot be workflow steps (a duplicate would "
                "leave the steps that wait for it waiting forever)"
            )  # fmt: skip
        if any(step.job is job for step in self._steps.values()):
            raise WorkflowValidationError(
                str(name), "job", "this Job object is already a step; build one job per step"
            )
        ignore = self._ignore(str(name), ignore_cancelled, ignore_discarded, ignore_deleted)
        return self._put(_Step(name, self._deps(name, deps), job=job, ignore=ignore))

    def add_many(
        self,
        name: str,
        jobs: Sequence[Job] | Mapping[str, Job],
        *,
        deps: Deps = None,
        ignore_cancelled: bool | None = None,
        ignore_discarded: bool | None = None,
        ignore_deleted: bool | None = None,
    ) -> Workflow:
        """Add a fan-out: ``jobs`` run in parallel as one sub-workflow named ``name`` (steps
        ``"0"``, ``"1"``, ... or the mapping's keys); a step that depends on ``name`` waits
        for all of them."""
        if isinstance(jobs, Mapping):
            named = list(jobs.items())
        elif isinstance(jobs, (str, bytes)) or not isinstance(jobs, Sequence):
            raise WorkflowValidationError(
                str(name), "jobs", f"add_many takes a list or a dict of jobs, got {jobs!r:.80}"
            )
        else:
            named = [(str(i), job) for i, job in enumerate(jobs)]
        if not named:
            raise WorkflowValidationError(str(name), "jobs", "add_many needs at least one job")
        defaults = self._defaults
        sub = Workflow(
            name=str(name) if isinstance(name, str) else None,
            ignore_cancelled=defaults["ignore_cancelled"],
            ignore_discarded=defaults["ignore_discarded"],
            ignore_deleted=defaults["ignore_deleted"],
        )
        for key, job in named:
            try:
                sub.add(
                    key, job, ignore_cancelled=ignore_cancelled,
                    ignore_discarded=ignore_discarded, ignore_deleted=ignore_deleted,
                )  # fmt: skip
            except WorkflowValidationError as exc:
                raise WorkflowValidationError(f"{name}.{key}", exc.field, exc.detail) from None
        return self.add_workflow(name, sub, deps=deps)

    def add_workflow(self, name: str, workflow: Workflow, *, deps: Deps = None) -> Workflow:
        """Add ``workflow`` as a sub-workflow named ``name``: its first steps wait for ``deps``,
        and a step that depends on ``name`` waits for every job in it."""
        if not isinstance(workflow, Workflow):
            raise WorkflowValidationError(
                str(name), "workflow", f"expected a Workflow, got {workflow!r:.80}"
            )
        if workflow is self or workflow._contains(self):
            raise WorkflowValidationError(str(name), "workflow", "a workflow cannot contain itself")
        if workflow._included:
            raise WorkflowValidationError(
                str(name), "workflow", f"workflow {workflow.id} is already a sub-workflow"
            )
        if not workflow._steps:
            raise WorkflowValidationError(str(name), "workflow", "the sub-workflow has no steps")
        if workflow.id in self._workflow_ids():
            raise WorkflowValidationError(
                str(name), "workflow", f"workflow id {workflow.id!r} is used twice"
            )
        step = self._put(_Step(name, self._deps(name, deps), sub=workflow))
        workflow._included = True
        return step

    # -- reading ----------------------------------------------------------------------------

    @property
    def steps(self) -> list[str]:
        """Step names, in the order they were added."""
        return list(self._steps)

    def __len__(self) -> int:
        """Number of jobs, sub-workflows included."""
        return sum(len(s.sub) if s.sub is not None else 1 for s in self._steps.values())

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Workflow{label} {self.id} steps={len(self._steps)} jobs={len(self)}>"

    def validate(self) -> None:
        """Raise :class:`WorkflowValidationError` for unknown deps or a cycle (in this
        workflow or any sub-workflow)."""
        self._order()
        for step in self._steps.values():
            if step.sub is not None:
                step.sub.validate()

    def flatten(self) -> list[WorkflowJob]:
        """Every job with its meta set and the positions of the jobs it waits for, upstream
        before downstream. Validates first; the jobs' ``meta`` and ``state`` are set here."""
        self.validate()
        out: list[WorkflowJob] = []
        self._flatten(out, sup_id=None, inherited=[])
        return out

    # -- internals --------------------------------------------------------------------------

    def _put(self, step: _Step) -> Workflow:
        _check_name(str(step.name), "name", step.name)
        if step.name in self._steps:
            raise WorkflowValidationError(step.name, "name", "a step with this name exists")
        self._steps[step.name] = step
        return self

    def _deps(self, name: object, deps: Deps) -> tuple[str, ...]:
        if deps is None:
            return ()
        names = [deps] if isinstance(deps, str) else deps
        if not isinstance(names, Sequence) or not all(isinstance(d, str) for d in names):
            raise WorkflowValidationError(
                str(name), "deps", f"deps must be a step name or a list of names, got {deps!r}"
            )
        if name in names:
            raise WorkflowValidationError(str(name), "deps", "a step cannot depend on itself")
        return tuple(dict.fromkeys(names))

    def _ignore(self, name: str, *values: bool | None) -> tuple[tuple[str, bool], ...]:
        chosen = []
        for option, value in zip(_IGNORE_OPTIONS, values, strict=True):
            flag = self._defaults[option] if value is None else _check_flag(name, option, value)
            if flag:
                chosen.append((option, True))
        return tuple(chosen)

    def _order(self) -> list[_Step]:
        """Steps in dependency order (Kahn); unknown deps and cycles are refused."""
        for step in self._steps.values():
            for dep in step.deps:
                if dep not in self._steps:
                    known = ", ".join(repr(s) for s in self._steps) or "none"
                    raise WorkflowValidationError(
                        step.name, "deps", f"depends on {dep!r}, which is not a step of this "
                        f"workflow (steps: {known})"
                    )  # fmt: skip
        waiting = {name: set(step.deps) for name, step in self._steps.items()}
        downstream: dict[str, list[str]] = {name: [] for name in self._steps}
        for name, step in self._steps.items():
            for dep in step.deps:
                downstream[dep].append(name)
        left = {name: len(deps) for name, deps in waiting.items()}
        ready = deque(name for name, n in left.items() if n == 0)
        order: list[_Step] = []
        while ready:
            name = ready.popleft()
            order.append(self._steps[name])
            for other in downstream[name]:
                left[other] -= 1
                if left[other] == 0:
                    ready.append(other)
        if len(order) < len(self._steps):
            stuck = [name for name, n in left.items() if n > 0]
            raise WorkflowValidationError(
                stuck[0], "deps", "is part of a dependency cycle: " + " -> ".join(
                    _cycle_through(stuck[0], {n: waiting[n] & set(stuck) for n in stuck}))
            )  # fmt: skip
        return order

    def _flatten(
        self, out: list[WorkflowJob], sup_id: str | None, inherited: list[int]
    ) -> list[int]:
        groups: dict[str, list[int]] = {}
        mine: list[int] = []
        for step in self._order():
            upstream = [i for dep in step.deps for i in groups[dep]] if step.deps else inherited
            if step.sub is not None:
                indices = step.sub._flatten(out, sup_id=self.id, inherited=upstream)
            else:
                assert step.job is not None
                self._prepare(step, sup_id)
                out.append(WorkflowJob(step.job, list(upstream)))
                indices = [len(out) - 1]
            groups[step.name] = indices
            mine.extend(indices)
        return mine

    def _prepare(self, step: _Step, sup_id: str | None) -> None:
        job = step.job
        assert job is not None
        meta: dict[str, Any] = {**job.meta, "workflow_id": self.id, "name": step.name,
                                "deps": list(step.deps)}  # fmt: skip
        if self.name is not None:
            meta["workflow_name"] = self.name
        if sup_id is not None:
            meta["sup_workflow_id"] = sup_id
        meta.update(dict(step.ignore))
        subs = {d: self._steps[d].sub._workflow_ids() for d in step.deps if self._steps[d].sub}  # type: ignore[union-attr]
        if subs:
            meta["wf_subs"] = subs
        job.meta = meta

    def _workflow_ids(self) -> list[str]:
        ids = [self.id]
        for step in self._steps.values():
            if step.sub is not None:
                ids.extend(step.sub._workflow_ids())
        return ids

    def _contains(self, other: Workflow) -> bool:
        return any(s.sub is other or (s.sub is not None and s.sub._contains(other))
                   for s in self._steps.values())  # fmt: skip


def _cycle_through(start: str, waiting: dict[str, set[str]]) -> list[str]:
    path, seen, name = [start], {start}, start
    while waiting.get(name):
        name = sorted(waiting[name])[0]
        path.append(name)
        if name in seen:
            break
        seen.add(name)
    return path


def _check_name(step: str, option: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise WorkflowValidationError(
            step, option, f"must be a non-empty string of at most {MAX_NAME} characters, "
            f"got {value!r:.80}"
        )  # fmt: skip


def _check_flag(step: str, option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise WorkflowValidationError(step, option, f"must be True or False, got {value!r}")
    return value
