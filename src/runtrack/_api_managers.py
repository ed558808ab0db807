"""``GET /managers``: the managers sharing the app manager's registry (see `runs_router`).

Kept out of ``runtrack.fastapi`` so that module stays about runs; `add_managers_route` is
called by ``runs_router`` with the router's own manager dependency. No ``from __future__
import annotations`` here: FastAPI reads the route's annotations, which name the dependency
it was given.
"""

from typing import Annotated, Final

from fastapi import APIRouter, params

from runtrack._api_errors import ApiError, error_responses
from runtrack._manager import BackgroundTaskManager
from runtrack._presence import ManagerInfo
from runtrack.registry.base import ManagerPresence

__all__ = ["MANAGERS_PATH", "UNSUPPORTED", "add_managers_route"]

#: Where the list is served, relative to the router.
MANAGERS_PATH: Final = "/managers"
#: The error ``code`` of a 501: the registry keeps no managers.
UNSUPPORTED: Final = "managers_unsupported"


def add_managers_route(router: APIRouter, manager_dependency: params.Depends) -> None:
    """Serve ``GET /managers`` from ``router``.

    Args:
        router: The runs router (its prefix and dependencies apply).
        manager_dependency: ``Depends(get_task_manager)``: the app's manager.
    """

    @router.get(MANAGERS_PATH, responses=error_responses(501, 503), summary="List managers")
    async def list_managers(
        manager: Annotated[BackgroundTaskManager, manager_dependency],
    ) -> list[ManagerInfo]:
        """Every manager registered in the registry (this one included), by ``owner``.

        Each registers when it starts, refreshes ``heartbeat_at`` once per
        ``heartbeat_interval`` and unregisters when it shuts down. One whose heartbeat is
        older than its own ``lease_seconds`` is late: any other manager's next lease check
        declares it dead. 501 ``managers_unsupported`` if the registry keeps no managers
        (every built-in registry does).
        """
        registry = manager.registry
        if not isinstance(registry, ManagerPresence):
            raise ApiError(
                501,
                UNSUPPORTED,
                f"the registry ({type(registry).__name__}) keeps no managers: "
                "use a registry with ManagerPresence (every built-in one has it)",
            )
        return await registry.list_managers()
