"""The ``@background`` decorator: calling the function starts a tracked run."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec

from runtrack._exceptions import RuntrackError
from runtrack._tasks import R, TaskFunction, register_default, task_decorator

if TYPE_CHECKING:
    from runtrack._manager import BackgroundTaskManager
    from runtrack._models import Retry

__all__ = [
    "BackgroundFunction",
    "P",
    "RunOptions",
    "background",
    "decorator",
    "default_manager_or_none",
    "get_default_manager",
    "set_default_manager",
    "task",
]

P = ParamSpec("P")

_default: BackgroundTaskManager | None = None


def set_default_manager(manager: BackgroundTaskManager | None) -> None:
    """Make ``manager`` the one that module-level ``@runtrack.background`` functions use.

    ``runtrack.fastapi.lifespan`` does this for the app's manager; None unsets it.
    """
    global _default  # noqa: PLW0603 - one process-wide default, like logging's root logger
    _default = manager
    if manager is not None:
        manager._claims.wake()  # it runs the tasks declared with @runtrack.task now


def default_manager_or_none() -> BackgroundTaskManager | None:
    """The manager set by `set_default_manager`, or None."""
    return _default


def get_default_manager() -> BackgroundTaskManager:
    """The manager set by `set_default_manager`.

    Raises:
        RuntrackError: none is set.
    """
    if _default is None:
        raise RuntrackError(
            "no default BackgroundTaskManager: use runtrack.fastapi.lifespan(...) in your "
            "FastAPI app, or call runtrack.set_default_manager(manager) at startup"
        )
    return _default


@dataclasses.dataclass(frozen=True, slots=True)
class RunOptions:
    """Options the decorated function's runs are started with."""

    name: str | None = None
    timeout: float | None = None
    group: str | None = None
    priority: int = 0
    retry: Retry | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


class BackgroundFunction(Generic[P]):
    """A function whose call starts a run and returns the run id at once.

    An async function runs on the event loop; a plain one in a worker thread.

    The original function stays available as ``.func`` (await it to run it inline, as in
    tests). Arguments must be what the function takes; they are kept until the run starts.
    """

    __name__: str
    __qualname__: str
    __doc__: str | None

    def __init__(
        self,
        func: Callable[P, Any],
        *,
        manager: Callable[[], BackgroundTaskManager],
        options: RunOptions,
    ) -> None:
        if not callable(func):
            raise TypeError(f"@background decorates a function, got {func!r}")
        self.func = func
        self._manager = manager
        self._options = options
        functools.update_wrapper(self, func)

    def __repr__(self) -> str:
        return f"<background {getattr(self.func, '__qualname__', self.func)!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Start a run of the function with these arguments; returns its run id."""
        o = self._options
        # Bind the arguments first: the function's own ``name=`` or ``timeout=`` arguments
        # must not be taken for run options.
        return self._manager().start_call(
            functools.partial(self.func, *args, **kwargs),
            name=o.name or getattr(self.func, "__qualname__", None),
            timeout=o.timeout,
            group=o.group,
            priority=o.priority,
            retry=o.retry,
            tags=o.tags,
        )


def background(
    *,
    name: str | None = None,
    timeout: float | None = None,
    group: str | None = None,
    priority: int = 0,
    retry: Retry | None = None,
    tags: dict[str, str] | None = None,
) -> Callable[[Callable[P, Any]], BackgroundFunction[P]]:
    """Like `BackgroundTaskManager.background`, bound to the default manager at call time.

    The manager is looked up when the function is called (not when it is decorated), so
    module-level tasks can be declared before the app starts.

    Example:
        >>> import runtrack
        >>> @runtrack.background(timeout=30, group="mail")
        ... async def send_welcome(user_id: int) -> None: ...
    """
    options = RunOptions(
        name=name,
        timeout=timeout,
        group=group,
        priority=priority,
        retry=retry,
        tags=dict(tags or {}),
    )
    return decorator(get_default_manager, options)


def decorator(
    manager: Callable[[], BackgroundTaskManager], options: RunOptions
) -> Callable[[Callable[P, Any]], BackgroundFunction[P]]:
    """The decorator that wraps functions into `BackgroundFunction` with these options."""

    def wrap(func: Callable[P, Any]) -> BackgroundFunction[P]:
        return BackgroundFunction(func, manager=manager, options=options)

    return wrap


def task(
    name: str | None = None,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    group: str | None = None,
    priority: int = 0,
    requeue_on_interrupt: bool = False,
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """Like `BackgroundTaskManager.task`, for the default manager (`set_default_manager`).

    The task is declared when the module is imported; the default manager (whichever it is
    when runs are submitted and claimed) runs it.

    Example:
        >>> import runtrack
        >>> @runtrack.task(retry=runtrack.Retry(attempts=3))
        ... async def send_invoice(invoice_id: int) -> None: ...
    """
    return task_decorator(
        get_default_manager,
        register_default,
        name=name,
        retry=retry,
        timeout=timeout,
        group=group,
        priority=priority,
        requeue_on_interrupt=requeue_on_interrupt,
    )
