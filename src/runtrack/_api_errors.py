"""How the runs router fails: every error is a JSON ``{"error": ..., "code": ...}``.

`ApiRoute` is the route class of ``runtrack.fastapi.runs_router``: it turns `ApiError`, a
request that fails validation, an unavailable registry and any other exception into an
`ErrorResponse` body. `error_responses` describes those bodies in OpenAPI, and
`run_or_404` is the lookup every route of one run starts with.
"""

from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from runtrack._exceptions import RegistryUnavailableError
from runtrack._logging import get_logger
from runtrack._manager import BackgroundTaskManager
from runtrack._models import Run

__all__ = [
    "ApiError",
    "ApiRoute",
    "ErrorResponse",
    "error_response",
    "error_responses",
    "run_or_404",
]

_log = get_logger()


class ErrorResponse(BaseModel):
    """The body of every error the runs router returns."""

    error: str = Field(description="What went wrong, for people.")
    code: str = Field(
        description="For programs: run_not_found, not_found (a dashboard file), "
        "run_finished, invalid_filter, invalid_request, registry_unavailable, "
        "managers_unsupported or internal_error.",
        examples=["run_not_found"],
    )


class ApiError(Exception):
    """An error with its HTTP status and machine code, rendered as `ErrorResponse`."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


def error_response(status_code: int, code: str, message: str) -> JSONResponse:
    """The `ErrorResponse` body of an error, with its status."""
    return JSONResponse({"error": message, "code": code}, status_code=status_code)


async def run_or_404(manager: BackgroundTaskManager, run_id: str) -> Run:
    """The run ``run_id`` as the registry records it.

    Raises:
        ApiError: 404 ``run_not_found``, there is no such run.
    """
    run = await manager.registry.get_run(run_id)
    if run is None:
        raise ApiError(404, "run_not_found", f"no run {run_id[:200]!r}")
    return run


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    problems = []
    from_query = True
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        from_query = from_query and bool(loc) and loc[0] == "query"
        where = ".".join(loc[1:] if len(loc) > 1 else loc)
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
    code = "invalid_filter" if from_query else "invalid_request"
    return error_response(422, code, "; ".join(problems) or "invalid request")


class ApiRoute(APIRoute):
    """Renders every failure of a runs endpoint as ``{"error": ..., "code": ...}``.

    An ``APIRouter`` cannot register exception handlers, so the route does it: the
    router then works with a plain ``app.include_router``. `HTTPException` from the app's
    own dependencies (authentication) passes through to the app's handlers.
    """

    expose_errors: ClassVar[bool] = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so that it answers every failure as an `ErrorResponse`."""
        handler = super().get_route_handler()
        expose = self.expose_errors

        async def handle(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except ApiError as exc:
                return error_response(exc.status_code, exc.code, exc.message)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except HTTPException:
                raise
            except RegistryUnavailableError as exc:
                _log.warning(
                    "api_registry_unavailable", method=request.method, path=request.url.path,
                    error=str(exc),
                )  # fmt: skip
                message = str(exc) if expose else "the run registry is unavailable: retry later"
                return error_response(503, "registry_unavailable", message)
            except Exception as exc:
                _log.error(
                    "api_request_failed", method=request.method, path=request.url.path,
                    exc_info=exc,
                )  # fmt: skip
                message = f"{type(exc).__name__}: {exc}" if expose else "internal error"
                return error_response(500, "internal_error", message)
            return response

        return handle


def error_responses(*codes: int, inline: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these codes, and 422 and 500, which any endpoint may return.

    With ``inline``, the schema is written out instead of given as a model: FastAPI would
    describe a model with the route's own media type, which for the event stream is not
    JSON.
    """
    descriptions = {
        404: "No run with this id.",
        409: "The run has already finished.",
        501: "The registry keeps no managers (managers_unsupported).",
        422: "A filter or parameter is invalid (invalid_filter for query parameters).",
        500: "An unexpected error (its message is hidden unless expose_errors=True).",
        503: "The run registry cannot be reached.",
    }
    if inline:
        schema = {"application/json": {"schema": ErrorResponse.model_json_schema()}}
        return {
            c: {"description": descriptions[c], "content": schema}
            for c in sorted({*codes, 422, 500})
        }
    return {
        c: {"model": ErrorResponse, "description": descriptions[c]}
        for c in sorted({*codes, 422, 500})
    }
