"""runtrack's logger: silent until the application asks to hear it.

Every module logs through `get_logger`. An event goes through structlog when the
application has configured structlog (`structlog.is_configured`, checked at each call, so
`structlog.testing.capture_logs` catches the events of loggers made before it); otherwise
it goes to the stdlib logger ``"runtrack"``, so `logging`'s defaults decide: with nothing
configured, WARNING and above reach stderr through `logging.lastResort` and nothing else is
printed. runtrack never configures structlog and never adds a handler.

A stdlib record carries the event and its fields in its message (``run_failed
run_id=... name=work status=failed``, rendered by structlog's `LogfmtRenderer`), the
traceback as ``exc_info``, and each field as a record attribute for formatters (``extra``;
a field named like a `logging.LogRecord` attribute, such as ``name``, becomes
``runtrack_name``), plus ``event``.

Logging never affects a run: an exception raised while logging (a closed stdout, a
processor or handler that raises) is swallowed.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import structlog
from structlog.processors import LogfmtRenderer

__all__ = ["LOGGER_NAME", "Logger", "get_logger"]

#: The stdlib logger runtrack's events go to when structlog is not configured.
LOGGER_NAME: Final = "runtrack"

_stdlib: Final = logging.getLogger(LOGGER_NAME)
_render: Final = LogfmtRenderer(bool_as_flag=False)
# Attributes `logging.Logger.makeRecord` refuses to overwrite with ``extra``.
_RECORD_ATTRIBUTES: Final = frozenset(
    {*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName"}
)
_EXTRA_PREFIX: Final = "runtrack_"


class Logger:
    """runtrack's logger: the subset of structlog's bound logger API the library uses."""

    __slots__ = ("_bound", "_context", "_structlog")

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context
        self._structlog = structlog.get_logger(LOGGER_NAME, **context)
        # The structlog logger built from the configuration of the moment, with that
        # configuration: (processors, wrapper class, logger factory, context class, logger).
        self._bound: tuple[Any, ...] = ()

    def bind(self, **values: Any) -> Logger:
        """A logger whose events also carry ``values``."""
        return Logger({**self._context, **values})

    def is_enabled_for(self, level: int) -> bool:
        """Whether an event at ``level`` would be heard now (False if that cannot be told).

        Callers resolve this once (the manager at start-up) to skip building events nobody
        hears; the events themselves are routed at each call.
        """
        try:
            if structlog.is_configured():
                is_enabled = getattr(self._structlog_logger(), "is_enabled_for", None)
                return bool(is_enabled(level)) if callable(is_enabled) else True
            return _stdlib.isEnabledFor(level)
        except Exception:  # a broken logging setup: stay quiet and fast
            return False

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at DEBUG level."""
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at INFO level."""
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at WARNING level."""
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR level; ``exc_info=exc`` adds the traceback."""
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR level with the exception being handled."""
        fields.setdefault("exc_info", True)
        self._log(logging.ERROR, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """Log ``event`` at CRITICAL level."""
        self._log(logging.CRITICAL, "critical", event, fields)

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        try:
            if structlog.is_configured():
                getattr(self._structlog_logger(), method)(event, **fields)
            elif _stdlib.isEnabledFor(level):
                exc_info = fields.pop("exc_info", None)
                for key, value in self._context.items():
                    fields.setdefault(key, value)
                extra = {
                    (_EXTRA_PREFIX + key if key in _RECORD_ATTRIBUTES else key): value
                    for key, value in fields.items()
                }
                extra["event"] = event
                message = f"{event} {_render(None, method, fields)}" if fields else event
                # stacklevel 3: the record names the runtrack line that logged, not this one.
                _stdlib.log(level, message, exc_info=exc_info, extra=extra, stacklevel=3)
        except Exception:  # logging must never affect a run
            pass

    def _structlog_logger(self) -> Any:
        """The structlog logger for the current configuration, rebuilt when it changes."""
        config = structlog.get_config()
        bound = self._bound
        if (
            not bound
            or bound[0] is not config["processors"]
            or bound[1] is not config["wrapper_class"]
            or bound[2] is not config["logger_factory"]
            or bound[3] is not config["context_class"]
        ):
            bound = self._bound = (
                config["processors"],
                config["wrapper_class"],
                config["logger_factory"],
                config["context_class"],
                self._structlog.bind(),
            )
        return bound[4]


def get_logger(**context: Any) -> Logger:
    """Return runtrack's logger, its events carrying ``context`` (``owner=...``)."""
    return Logger(context)
