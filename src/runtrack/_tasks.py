"""Durable tasks: functions registered under a name, whose runs any replica may execute.

``@manager.task()`` (or ``@runtrack.task()``, bound to the default manager) registers a
function; ``await fn.submit(*args, **kwargs)`` records a QUEUED run with ``task`` set, its
JSON arguments, and no owner, before it returns. Every manager sharing the registry that
registered the same name may claim it (see `runtrack._claims`); exactly one does. With
``delay``, the run is recorded at once with a ``not_before`` time, before which no manager
claims it.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from runtrack._claims import TaskSpec
from runtrack._exceptions import ManagerClosedError
from runtrack._idempotent import add_once
from runtrack._models import Retry, Run, args_problem, new_run_id, utcnow
from runtrack._requeue import delay_until
from runtrack._state import State
from runtrack._submission import colliding_options, name_of
from runtrack._uncut import uncut
from runtrack.registry._claiming import TaskClaiming
from runtrack.registry._idempotency import check_idempotency_key

if TYPE_CHECKING:
    from runtrack._manager import BackgroundTaskManager

__all__ = ["R", "TaskFunction", "default_tasks", "register_default", "task_decorator"]

P = ParamSpec("P")
R = TypeVar("R")

#: Tasks declared with ``@runtrack.task``: the default manager runs them.
_default_tasks: dict[str, TaskSpec] = {}


def default_tasks() -> dict[str, TaskSpec]:
    """The tasks declared with ``@runtrack.task`` (the default manager runs them)."""
    return dict(_default_tasks)


class TaskFunction(Generic[P, R]):
    """A function registered as a durable task (see ``BackgroundTaskManager.task``).

    Calling it runs the function directly, as if undecorated. ``await fn.submit(...)``
    records a durable run that any manager which registered the same name may execute.

    Attributes:
        name: The task name recorded in each run's ``task`` (and ``name``).
        func: The function itself.
    """

    __name__: str
    __qualname__: str
    __doc__: str | None

    def __init__(self, spec: TaskSpec, manager: Callable[[], BackgroundTaskManager]) -> None:
        self._spec = spec
        self._manager = manager
        self.name = spec.name
        self.func: Callable[P, R] = spec.fn
        functools.update_wrapper(self, spec.fn)

    def __repr__(self) -> str:
        return f"<task {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function now, in the caller (no run is recorded)."""
        return self.func(*args, **kwargs)

    async def submit(
        self,
        *args: Any,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        group: str | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        **kwargs: Any,
    ) -> Run:
        """Record a durable run of this task with these arguments; returns the `Run`.

        The run is in the registry, QUEUED and unclaimed, before this returns; a manager
        that registered the task claims and runs it (this one, or another replica).

        Args:
            *args: Positional arguments for the function (JSON values).
            run_id: The id; default a fresh UUID4.
            tags: String labels to filter runs by.
            parameters: JSON describing the work (shown in dashboards).
            group: Concurrency group; default the task's.
            priority: Higher is claimed first; default the task's.
            timeout: Seconds before the run fails with ``TimeoutError``; default the task's.
            idempotency_key: While a run with this key is active, or finished less than
                the manager's ``idempotency_ttl`` ago, that run is returned instead of
                recording another, whichever manager recorded it.
            delay: Seconds (or a `timedelta`) before the run may start: it is recorded
                now, with ``not_before`` set, and no manager claims it before then (this
                one wakes up for it; others find it within their ``poll_interval``).
            **kwargs: Keyword arguments for the function (JSON values). A keyword that is
                both an option above and a parameter of the function is a `TypeError`:
                pass that argument positionally.

        Raises:
            TypeError: a keyword is both an option and a parameter; the registry cannot
                share runs between managers (it lacks `TaskClaiming`); a delay that is
                neither a number nor a `timedelta`.
            ValueError: arguments that are not JSON (a ``pydantic.ValidationError``), or
                larger than ``max_payload_bytes``; a negative or NaN delay.
            DuplicateRunError: the id exists.
            ManagerClosedError: the manager has shut down.
        """
        options = {
            "run_id": run_id, "tags": tags, "parameters": parameters, "group": group,
            "priority": priority, "timeout": timeout, "idempotency_key": idempotency_key,
            "delay": delay,
        }  # fmt: skip
        not_before = delay_until(delay)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        manager, _ = self._target()
        template = self._template(manager, options, not_before)
        run = self._run(manager, template, args, kwargs, options, run_id=template.run_id)
        if idempotency_key is None:
            recorded = uncut(manager.registry.add_run(run))
            await manager._bounded(recorded, "the run was not recorded")
        else:
            ttl = manager._options.idempotency_ttl
            once = uncut(add_once(manager.registry, run, ttl))
            run, inserted = await manager._bounded(once, "the run was not recorded")
            if not inserted:
                return run
        await self._submitted(manager, not_before)
        return run

    async def submit_many(
        self,
        calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
        *,
        tags: Mapping[str, str] | None = None,
        group: str | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        delay: float | timedelta | None = None,
    ) -> list[Run]:
        """Record one durable run per ``(args, kwargs)`` pair, in one registry round trip.

        All or none: if one cannot be recorded, none is. The options apply to every run
        (with ``delay``, they share one ``not_before``).

        Example:
            >>> async def enqueue(resize: TaskFunction[..., Any]) -> list[Run]:
            ...     return await resize.submit_many([(["a.png"], {"width": 64}), (["b.png"], {})])

        Raises:
            TypeError, ValueError, DuplicateRunError, ManagerClosedError: as `submit`.
        """
        options = {
            "tags": tags, "group": group, "priority": priority, "timeout": timeout, "delay": delay
        }  # fmt: skip
        not_before = delay_until(delay)
        pairs = []
        for call in calls:
            if not isinstance(call, tuple | list) or len(call) != 2:  # type: ignore[redundant-expr]
                raise TypeError(
                    f"submit_many() takes (args, kwargs) pairs, e.g. ([1, 2], {{'x': 3}}), "
                    f"got {call!r}"
                )
            pairs.append((tuple(call[0]), dict(call[1])))
        manager, registry = self._target()
        template = self._template(manager, options, not_before)
        runs = [self._run(manager, template, args, kwargs, options) for args, kwargs in pairs]
        if runs:
            await manager._bounded(uncut(registry.add_runs(runs)), "the runs were not recorded")
            await self._submitted(manager, not_before)
        return runs

    def _target(self) -> tuple[BackgroundTaskManager, TaskClaiming]:
        manager = self._manager()
        registry = manager.registry
        if not isinstance(registry, TaskClaiming):
            raise TypeError(
                f"durable tasks need a registry whose runs managers can claim "
                f"(InMemoryRunRegistry, SQLRunRegistry, RedisRunRegistry), not "
                f"{type(registry).__name__}: use submit() for a local run"
            )
        if manager._state is State.CREATED:
            manager._start()
        elif manager._state is not State.RUNNING:
            raise ManagerClosedError(manager._state.value)
        return manager, registry

    def _template(
        self,
        manager: BackgroundTaskManager,
        options: Mapping[str, Any],
        not_before: datetime | None,
    ) -> Run:
        """The validated record every run of one submit call shares, arguments aside."""
        spec = self._spec
        priority = options.get("priority")
        timeout = options.get("timeout")
        template = Run(
            run_id=options.get("run_id") or new_run_id(),
            name=spec.name,
            task=spec.name,
            parameters=dict(options.get("parameters") or {}),
            tags=dict(options.get("tags") or {}),
            group=options.get("group") or spec.group,
            priority=spec.priority if priority is None else priority,
            timeout=spec.timeout if timeout is None else timeout,
            max_attempts=spec.retry.attempts if spec.retry is not None else 1,
            requeue_on_interrupt=spec.requeue_on_interrupt,
            idempotency_key=options.get("idempotency_key"),
            not_before=not_before,
        )
        manager._check_parameters(template.parameters)
        return template

    def _run(
        self,
        manager: BackgroundTaskManager,
        template: Run,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: Mapping[str, Any],
        *,
        run_id: str | None = None,
    ) -> Run:
        """The QUEUED record of one call: ``template`` with its JSON arguments.

        The arguments go through JSON and back, so the run holds exactly what the registry
        stores (a tuple becomes a list); what JSON cannot hold is refused here.
        """
        spec = self._spec
        given = [key for key, value in options.items() if value is not None]
        clash = colliding_options(spec.fn, given) if given else given
        if clash:  # unambiguous if the function's own argument was given positionally
            try:
                bound = inspect.signature(spec.fn).bind_partial(*args).arguments
            except TypeError:
                bound = {}
            clash = [name for name in clash if name not in bound]
        if clash:
            raise TypeError(
                f"{clash[0]}= is both an option of submit() and a parameter of task "
                f"{spec.name!r}, so it is ambiguous: pass the function's argument "
                f"positionally; options are never given to the function"
            )
        call, size = _json_arguments(spec.name, args, kwargs)
        limit = manager._max_payload
        if limit is not None and size > limit:
            manager._check_parameters(call)  # raises, saying what to do
        return template.model_copy(
            update={"run_id": run_id or new_run_id(), "created_at": utcnow(), "args": call}
        )

    async def _submitted(self, manager: BackgroundTaskManager, not_before: datetime | None) -> None:
        """Tell the managers that run this task: this one now, others if announced.

        A delayed run: this one at ``not_before``; the others find it by their poll (an
        announcement now would only make them look before it is due).
        """
        claims = manager._claims
        if not_before is not None:
            claims.wake_at(not_before)
            return
        claims.wake()
        if claims.announce is not None:
            await claims.announce([self.name])


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _json_arguments(
    task: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """``{"args": [...], "kwargs": {...}}`` as stored (through JSON), and its JSON size.

    The size counts bytes of compact UTF-8 JSON, as `max_payload_bytes` does.

    Raises:
        TypeError: a value JSON cannot hold (an object, bytes, a set, a non-str key).
        ValueError: NaN or an infinity; NUL or a lone surrogate in a string; nesting
            deeper than the registries take.
    """
    what = f"the arguments of task {task!r}"
    for key in _keys(kwargs, args):
        if not isinstance(key, str):
            raise TypeError(f"{what} must be JSON: object keys are str, got {key!r}")
    try:
        text = _dumps({"args": args, "kwargs": kwargs})
        call: dict[str, Any] = json.loads(text)
    except TypeError as exc:
        raise TypeError(
            f"{what} must be JSON values (str, int, float, bool, None, lists and "
            f"str-keyed dicts of them): {exc}; pass an id or a dict instead"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{what} must be JSON values: {exc} (NaN and infinities)") from None
    problem = args_problem(call)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    return call, len(text) if text.isascii() else len(text.encode())


def _keys(kwargs: dict[str, Any], args: tuple[Any, ...]) -> Iterator[object]:
    """Every dict key in the arguments (JSON would turn an int key into a str silently)."""
    stack: list[Any] = [kwargs, *args]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from item
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def task_decorator(
    manager: Callable[[], BackgroundTaskManager],
    register: Callable[[TaskSpec], None],
    *,
    name: str | None,
    retry: Retry | None,
    timeout: float | None,
    group: str | None,
    priority: int,
    requeue_on_interrupt: bool,
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """The decorator of `BackgroundTaskManager.task` and `task`."""
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"retry must be a runtrack.Retry, got {type(retry).__name__}")
    if name is not None and (not isinstance(name, str) or not name):  # type: ignore[redundant-expr]
        raise ValueError(f"a task name is a non-empty str, got {name!r}")

    def wrap(fn: Callable[P, R]) -> TaskFunction[P, R]:
        if not callable(fn):
            raise TypeError(f"@task decorates a function, got {fn!r}")
        spec = TaskSpec(
            name=name or name_of(fn),
            fn=fn,
            retry=retry,
            timeout=timeout,
            group=group,
            priority=priority,
            requeue_on_interrupt=requeue_on_interrupt,
        )
        register(spec)
        return TaskFunction(spec, manager)

    return wrap


def register_default(spec: TaskSpec) -> None:
    """Declare ``spec`` for the default manager (``@runtrack.task``)."""
    known = _default_tasks.get(spec.name)
    if known is not None and known.conflicts_with(spec):
        raise ValueError(
            f"a different function is already registered as the durable task {spec.name!r}: "
            f"give one of them another name (@runtrack.task(name=...))"
        )
    _default_tasks[spec.name] = spec
