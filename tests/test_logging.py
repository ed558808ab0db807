"""runtrack is silent until the application configures logging (DESIGN.md, "Logging defaults").

With nothing configured, events go to the stdlib logger ``"runtrack"``, so stdlib's
defaults decide: only WARNING and above reach stderr (through `logging.lastResort`).
Once the application configures structlog, events go through structlog. Logging failures
never affect a run.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest
import structlog
from structlog.testing import capture_logs

from helpers import SAFETY, Gate, wait_event
from runtrack import BackgroundTaskManager, InMemoryRunRegistry, Retry, Run, RunStatus
from runtrack._logging import get_logger

CHILD_TIMEOUT: Final = 60.0

#: What every child script runs: 100 runs, a quarter of each outcome, some of the
#: cancelled ones still queued (max_concurrency=20). It writes nothing itself.
MIXED_RUNS: Final = """
import asyncio

from runtrack import BackgroundTaskManager, RunStatus

KINDS = ("complete", "fail", "cancel", "timeout")
EXPECTED = {
    "complete": RunStatus.COMPLETED,
    "fail": RunStatus.FAILED,
    "cancel": RunStatus.CANCELLED,
    "timeout": RunStatus.FAILED,
}


async def ok(i):
    return i


async def boom(i):
    raise ValueError(f"boom {i}")


async def mixed(count):
    kinds = {}
    async with BackgroundTaskManager(max_concurrency=20) as manager:
        for i in range(count):
            kind = KINDS[i % 4]
            if kind == "complete":
                run = await manager.submit(ok, i, name="ok")
            elif kind == "fail":
                run = await manager.submit(boom, i, name="boom")
            elif kind == "cancel":
                run = await manager.submit(asyncio.sleep, 3600, name="cancelled")
            else:
                run = await manager.submit(asyncio.sleep, 3600, name="slow", timeout=0.05)
            kinds[run.run_id] = kind
        for run_id, kind in kinds.items():
            if kind == "cancel":
                assert await manager.cancel_task(run_id)
        for run_id, kind in kinds.items():
            finished = await manager.wait(run_id, timeout=30)
            assert finished.status is EXPECTED[kind], (kind, finished)
    return kinds
"""

_EVENT_LINE: Final = re.compile(
    r"^(?:(?P<level>[A-Z]+):runtrack:)?(?P<event>[a-z_]+) (?P<fields>\w+=.*)$"
)
_FIELD: Final = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def run_child(setup: str, count: int) -> tuple[dict[str, str], str, str]:
    """Run ``count`` mixed runs in a fresh interpreter after ``setup``.

    Returns:
        The kind of each run by id, and the child's stdout and stderr.
    """
    script = "\n".join(
        [
            textwrap.dedent(setup),
            MIXED_RUNS,
            "import json, sys",
            f"kinds = asyncio.run(mixed({count}))",
            # Written after the runs, to a descriptor the test reads apart from stdout.
            "with open(sys.argv[1], 'w') as out:",
            "    json.dump(kinds, out)",
        ]
    )
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        result = subprocess.run(
            [sys.executable, "-c", script, out.name],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        kinds: dict[str, str] = json.load(out)
    return kinds, result.stdout, result.stderr


def parse_events(stderr: str) -> list[tuple[str | None, str, dict[str, str], list[str]]]:
    """Split stderr into events: (level, event, fields, the lines that follow it)."""
    events: list[tuple[str | None, str, dict[str, str], list[str]]] = []
    for line in stderr.splitlines():
        match = _EVENT_LINE.match(line)
        if match:
            fields = dict(_FIELD.findall(match["fields"]))
            events.append((match["level"], match["event"], fields, []))
        else:
            assert events, f"stderr does not start with an event: {stderr[:500]!r}"
            events[-1][3].append(line)
    return events


@pytest.fixture(autouse=True)
def unconfigured() -> Iterator[logging.Logger]:
    """Logging as a fresh interpreter has it (structlog reset, stdlib at WARNING); restored."""
    root, logger = logging.getLogger(), logging.getLogger("runtrack")
    saved = (root.level, logger.level, logger.handlers[:], logger.propagate)
    structlog.reset_defaults()
    root.setLevel(logging.WARNING)
    logger.setLevel(logging.NOTSET)
    try:
        yield logger
    finally:
        structlog.reset_defaults()
        root.level, logger.level, logger.handlers, logger.propagate = saved


class Records(logging.Handler):
    """Keeps the records it gets, after formatting each (message and traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        self.records.append(record)

    def events(self) -> list[str]:
        return [getattr(record, "event", "") for record in self.records]


@pytest.fixture
def records(unconfigured: logging.Logger) -> Records:
    """The stdlib ``runtrack`` logger at DEBUG, its records kept (not propagated)."""
    handler = Records()
    unconfigured.setLevel(logging.DEBUG)
    unconfigured.handlers = [handler]
    unconfigured.propagate = False
    return handler


async def ok(i: int = 0) -> int:
    return i


async def boom(i: int = 0) -> None:
    raise ValueError(f"boom {i}")


async def outcomes(manager: BackgroundTaskManager) -> dict[str, tuple[Any, ...]]:
    """Complete, fail, cancel (running and queued), time out and retry; what each ends as."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("once")
        return "second time"

    blocker, queued = Gate("blocker"), Gate("queued")
    names = {
        "complete": (await manager.submit(ok, 7)).run_id,
        "fail": (await manager.submit(boom, 1)).run_id,
        "timeout": (await manager.submit(asyncio.sleep, 60, timeout=0.01)).run_id,
        "retry": (await manager.submit(flaky, retry=Retry(attempts=2, backoff=0))).run_id,
    }
    for run_id in list(names.values()):
        await manager.wait(run_id, timeout=SAFETY)
    manager.set_max_concurrency(1)
    names["cancel running"] = (await manager.submit(blocker.body)).run_id
    names["cancel queued"] = (await manager.submit(queued.body)).run_id
    await wait_event(blocker.started)
    assert await manager.cancel_task(names["cancel queued"])
    assert await manager.cancel_task(names["cancel running"])
    ended = {}
    for kind, run_id in names.items():
        run = await manager.wait(run_id, timeout=SAFETY)
        ended[kind] = (run.status, run.result, run.error_type, run.error_message, run.attempt)
    return ended


EXPECTED_OUTCOMES: Final = {
    "complete": (RunStatus.COMPLETED, 7, None, None, 1),
    "fail": (RunStatus.FAILED, None, "ValueError", "boom 1", 1),
    "timeout": (
        RunStatus.FAILED,
        None,
        "TimeoutError",
        "the run took longer than its timeout of 0.01s",
        1,
    ),
    "retry": (RunStatus.COMPLETED, "second time", None, None, 2),
    "cancel running": (RunStatus.CANCELLED, None, None, None, 1),
    "cancel queued": (RunStatus.CANCELLED, None, None, None, 1),
}


class TestSilentByDefault:
    """With no logging configured, only warnings and errors reach stderr; stdout stays empty."""

    def test_100_mixed_runs_print_only_their_failures(self) -> None:
        kinds, stdout, stderr = run_child("", 100)
        assert stdout == ""
        events = parse_events(stderr)
        # Exactly one ERROR event per failed or timed-out run, run_failed with its
        # traceback; completions, cancellations (INFO/DEBUG) and the manager's own DEBUG
        # events are not printed.
        failed = {run_id for run_id, kind in kinds.items() if kind in {"fail", "timeout"}}
        assert len(failed) == 50
        assert [event for _, event, _, _ in events] == ["run_failed"] * 50
        assert {fields["run_id"] for _, _, fields, _ in events} == failed
        for level, _, fields, traceback in events:
            assert level is None  # lastResort prints the bare message
            assert fields.keys() >= {"run_id", "name", "status", "attempt", "duration", "owner"}
            assert fields["status"] == "failed"
            assert traceback[0] == "Traceback (most recent call last):"
            if kinds[fields["run_id"]] == "fail":
                assert fields["name"] == "boom"
                assert re.fullmatch(r"ValueError: boom \d+", traceback[-1]), traceback
            else:
                assert fields["name"] == "slow"
                assert traceback[-1] == "TimeoutError", traceback

    def test_a_manager_left_alone_skips_debug_events(self) -> None:
        manager = BackgroundTaskManager()
        assert manager._debug is False


class TestStdlibLogging:
    """Without structlog configured, events are stdlib records of the ``runtrack`` logger."""

    def test_basic_config_at_debug_shows_every_event(self) -> None:
        kinds, stdout, stderr = run_child(
            "import logging\nlogging.basicConfig(level=logging.DEBUG)", 8
        )
        assert stdout == ""
        # basicConfig shows every logger: asyncio says which selector it uses.
        events = parse_events(stderr.replace("DEBUG:asyncio:Using selector: EpollSelector\n", ""))
        by_run: dict[str, list[tuple[str | None, str]]] = {}
        for level, event, fields, _ in events:
            if "run_id" in fields:
                by_run.setdefault(fields["run_id"], []).append((level, event))
        assert [e for _, e, _, _ in events].count("manager_started") == 1
        assert [e for _, e, _, _ in events].count("manager_closed") == 1
        started = [("DEBUG", "run_queued"), ("DEBUG", "run_started")]
        for run_id, kind in kinds.items():
            end = {
                "complete": ("DEBUG", "run_completed"),
                "fail": ("ERROR", "run_failed"),
                "timeout": ("ERROR", "run_failed"),
            }.get(kind)
            if end is not None:
                assert by_run[run_id] == [*started, end]
            else:  # cancelled: queued, maybe started, then run_cancelled
                assert by_run[run_id][0] == ("DEBUG", "run_queued")
                assert by_run[run_id][-1][1] == "run_cancelled"

    async def test_a_record_carries_the_event_its_fields_and_the_traceback(
        self, records: Records
    ) -> None:
        async with BackgroundTaskManager() as manager:
            run = await manager.submit(boom, 3, name="exploding")
            await manager.wait(run.run_id, timeout=SAFETY)
        [record] = [r for r in records.records if getattr(r, "event", "") == "run_failed"]
        assert (record.name, record.levelno) == ("runtrack", logging.ERROR)
        assert record.getMessage().startswith(f"run_failed run_id={run.run_id} name=exploding ")
        assert f"owner={manager.owner}" in record.getMessage()
        fields = vars(record)
        assert (fields["run_id"], fields["runtrack_name"], fields["status"]) == (
            run.run_id,
            "exploding",
            "failed",
        )
        assert (fields["attempt"], fields["owner"]) == (1, manager.owner)
        assert record.exc_info is not None
        assert record.exc_info[0] is ValueError
        assert record.pathname.endswith("_execution.py")  # the line that logged, not ours
        assert records.events()[:2] == ["manager_started", "run_queued"]

    async def test_configuring_logging_before_the_first_run_takes_effect(
        self, unconfigured: logging.Logger
    ) -> None:
        manager = BackgroundTaskManager()
        built = manager._debug
        handler = Records()
        unconfigured.setLevel(logging.DEBUG)
        unconfigured.addHandler(handler)
        async with manager:
            assert (built, manager._debug) == (False, True)
            run = await manager.submit(ok)
            await manager.wait(run.run_id, timeout=SAFETY)
        assert [e for e in handler.events() if e.startswith("run_")] == [
            "run_queued",
            "run_started",
            "run_completed",
        ]

    def test_values_are_rendered_as_logfmt(self, records: Records) -> None:
        get_logger(owner="me").warning(
            "something", text="two words", quote='say "hi"', none=None, flag=True, name="n"
        )
        [record] = records.records
        assert record.getMessage() == (
            'something text="two words" quote="say \\"hi\\"" none= flag=true name=n owner=me'
        )
        assert (record.event, record.runtrack_name, record.text) == ("something", "n", "two words")  # type: ignore[attr-defined]

    def test_bind_exception_and_critical(self, records: Records) -> None:
        log = get_logger(owner="me").bind(backend="redis")
        try:
            raise KeyError("gone")
        except KeyError:
            log.exception("it_broke", run_id="r1")
        log.critical("very_bad", owner="overridden")
        broke, bad = records.records
        assert (broke.levelno, broke.getMessage()) == (
            logging.ERROR,
            "it_broke run_id=r1 owner=me backend=redis",
        )
        assert broke.exc_info is not None
        assert broke.exc_info[0] is KeyError
        assert broke.funcName == "test_bind_exception_and_critical"
        assert (bad.levelno, bad.getMessage()) == (
            logging.CRITICAL,
            "very_bad owner=overridden backend=redis",
        )


def _collect(into: list[dict[str, Any]]) -> Callable[..., Any]:
    def processor(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        into.append({**event_dict, "level": method})
        raise structlog.DropEvent

    return processor


class TestStructlog:
    """Once the application configures structlog, every event goes through it."""

    async def test_events_go_through_structlog_not_stdlib(self, records: Records) -> None:
        seen: list[dict[str, Any]] = []
        structlog.configure(processors=[_collect(seen)])
        async with BackgroundTaskManager() as manager:
            assert manager._debug is True
            run = await manager.submit(boom, name="exploding")
            await manager.wait(run.run_id, timeout=SAFETY)
        assert records.records == []
        mine = [(e["event"], e["level"]) for e in seen if e.get("run_id") == run.run_id]
        assert mine == [("run_queued", "debug"), ("run_started", "debug"), ("run_failed", "error")]
        failed = seen[[e["event"] for e in seen].index("run_failed")]
        assert failed["name"] == "exploding"
        assert failed["owner"] == manager.owner
        assert isinstance(failed["exc_info"], ValueError)

    async def test_structlog_at_info_skips_debug_events(self) -> None:
        seen: list[dict[str, Any]] = []
        structlog.configure(
            processors=[_collect(seen)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        )
        async with BackgroundTaskManager() as manager:
            assert manager._debug is False
            run = await manager.submit(boom)
            await manager.wait(run.run_id, timeout=SAFETY)
        assert [e["event"] for e in seen] == ["run_failed"]

    async def test_structlog_routed_to_stdlib_follows_the_stdlib_level(
        self, unconfigured: logging.Logger
    ) -> None:
        structlog.configure(
            processors=[structlog.stdlib.filter_by_level, structlog.processors.KeyValueRenderer()],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        unconfigured.setLevel(logging.INFO)
        assert BackgroundTaskManager()._debug is False
        unconfigured.setLevel(logging.DEBUG)
        assert BackgroundTaskManager()._debug is True

    def test_a_new_configuration_takes_effect_at_once(self) -> None:
        first: list[dict[str, Any]] = []
        second: list[dict[str, Any]] = []
        log = get_logger()
        structlog.configure(processors=[_collect(first)])
        log.warning("one")
        structlog.configure(processors=[_collect(second)])
        log.warning("two")
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
        log.warning("three")
        log.error("four")
        assert [e["event"] for e in first] == ["one"]
        assert [e["event"] for e in second] == ["two", "four"]

    async def test_capture_logs_catches_loggers_made_before_it(self) -> None:
        early = get_logger(owner="early")
        manager = BackgroundTaskManager()
        async with manager:
            with capture_logs() as logs:
                early.warning("hello", n=1)
                run = await manager.submit(boom)
                await manager.wait(run.run_id, timeout=SAFETY)
        assert logs[0] == {"event": "hello", "n": 1, "owner": "early", "log_level": "warning"}
        assert [e["event"] for e in logs[1:]] == ["run_failed"]  # debug was off at start


Breakage = Callable[[logging.Logger, list[str]], None]


def _broken_structlog_processor(logger: logging.Logger, hits: list[str]) -> None:
    def processor(_: Any, __: str, event_dict: Any) -> Any:
        hits.append(event_dict["event"])
        raise RuntimeError("a processor bug")

    structlog.configure(processors=[processor])


def _closed_stdout(logger: logging.Logger, hits: list[str]) -> None:
    closed = io.StringIO()
    closed.close()

    def record(_: Any, __: str, event_dict: Any) -> Any:
        hits.append(event_dict["event"])
        return repr(event_dict)

    structlog.configure(processors=[record], logger_factory=structlog.PrintLoggerFactory(closed))


class _BrokenHandler(logging.Handler):
    def __init__(self, hits: list[str]) -> None:
        super().__init__()
        self.hits = hits

    def emit(self, record: logging.LogRecord) -> None:
        self.hits.append(record.event)  # type: ignore[attr-defined]
        raise RuntimeError("a handler bug")


def _broken_handler_at_debug(logger: logging.Logger, hits: list[str]) -> None:
    logger.setLevel(logging.DEBUG)
    logger.handlers = [_BrokenHandler(hits)]
    logger.propagate = False


def _broken_handler_at_warning(logger: logging.Logger, hits: list[str]) -> None:
    logger.handlers = [_BrokenHandler(hits)]
    logger.propagate = False


class TestLoggingFailures:
    """A logging call that raises never affects a run."""

    @pytest.mark.parametrize(
        "breakage",
        [
            _broken_structlog_processor,
            _closed_stdout,
            _broken_handler_at_debug,
            _broken_handler_at_warning,
        ],
        ids=lambda f: f.__name__.strip("_"),
    )
    async def test_runs_end_as_they_would_and_wait_returns(
        self, unconfigured: logging.Logger, breakage: Breakage
    ) -> None:
        hits: list[str] = []
        breakage(unconfigured, hits)
        async with asyncio.timeout(10 * SAFETY):
            async with BackgroundTaskManager(heartbeat_interval=0.05) as manager:
                assert await outcomes(manager) == EXPECTED_OUTCOMES
                await manager.wait_all(timeout=SAFETY)
            assert not await manager.registry.list_runs(
                status=[RunStatus.QUEUED, RunStatus.RUNNING]
            )
        assert {"run_failed", "run_retrying"} <= set(hits)  # logging did raise
        if manager._debug:
            assert {"run_queued", "run_started", "run_completed", "run_cancelled"} <= set(hits)

    def test_a_broken_logger_is_not_a_debug_logger(self, unconfigured: logging.Logger) -> None:
        structlog.configure(logger_factory=lambda *args: 1 / 0)
        assert get_logger().is_enabled_for(logging.DEBUG) is False


class TestDebugOnOff:
    """Debug logging changes which events are built, never how a run ends."""

    @pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
    async def test_outcomes_are_the_same(
        self, unconfigured: logging.Logger, debug: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if debug:
            unconfigured.setLevel(logging.DEBUG)
            unconfigured.handlers = [Records()]
            unconfigured.propagate = False
        registry = InMemoryRunRegistry()
        async with BackgroundTaskManager(registry) as manager:
            assert manager._debug is debug
            fast: list[str] = []
            direct = manager._completed_direct

            def spy(job: Any, result: Any) -> None:
                fast.append(job.run_id)
                direct(job, result)

            monkeypatch.setattr(manager, "_completed_direct", spy)
            plain = manager.start_task(Run(name="plain"), ok(5))
            await manager.wait_all(timeout=SAFETY)
            assert fast == ([] if debug else [plain])
            assert await outcomes(manager) == EXPECTED_OUTCOMES
        finished = await registry.get_run(plain)
        assert finished is not None
        assert (finished.status, finished.result) == (RunStatus.COMPLETED, 5)
