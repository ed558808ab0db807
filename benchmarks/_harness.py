"""Benchmark plumbing shared by every section: registry, timing, tables, JSON.

A *section* is one group of measurements (``core`` throughput, ``memory``, later the
Redis/SQL backends against arq/saq/procrastinate). A section module registers itself with
the `section` decorator and returns a `SectionResult`; `run.py` selects sections with
``--only``, prints their tables and checks, and writes everything as JSON.

To add a section: create ``benchmarks/<name>.py``, decorate a
``run(args: argparse.Namespace) -> SectionResult`` function with ``@section(...)``, and add
the module name to ``SECTION_MODULES`` in ``run.py``. Section-specific command-line options
go in the ``add_arguments`` hook; a section that needs a service (a Redis URL, a database)
returns a skip reason from ``available``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

Measurement = Callable[[], Coroutine[Any, Any, float]]
"""An async factory: one measurement, returning the elapsed seconds it timed itself."""


# -- results --------------------------------------------------------------------------------


@dataclass
class Check:
    """A target, printed as PASS/FAIL (informational: it never changes the exit code)."""

    name: str
    passed: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class Column:
    """A table column: a header, the row key it shows, and how to format the value."""

    header: str
    key: str
    fmt: Callable[[Any], str] = str
    align: str = ">"


@dataclass
class Table:
    """Rows (dicts) shown under some columns; extra keys in a row go to JSON only."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    title: str = ""

    def render(self) -> str:
        header = [col.header for col in self.columns]
        lines: list[list[str] | str] = []  # a str is an error line
        for row in self.rows:
            if row.get("error"):
                lines.append(f"{row.get(self.columns[0].key, '?')}  ERROR: {row['error']}")
            else:
                lines.append(
                    [
                        "-" if row.get(col.key) is None else col.fmt(row[col.key])
                        for col in self.columns
                    ]
                )
        cells = [header, *(line for line in lines if isinstance(line, list))]
        widths = [max(len(line[i]) for line in cells) for i in range(len(header))]

        def fmt_line(line: list[str]) -> str:
            parts = [
                f"{text:{'<' if i == 0 else col.align}{widths[i]}}"
                for i, (text, col) in enumerate(zip(line, self.columns, strict=True))
            ]
            return "  " + "  ".join(parts).rstrip()

        out = [self.title] if self.title else []
        out.append(fmt_line(header))
        out.append("  " + "  ".join("-" * w for w in widths))
        out.extend(fmt_line(line) if isinstance(line, list) else "  " + line for line in lines)
        return "\n".join(out)


@dataclass
class SectionResult:
    """What a section hands back: tables and checks to print, notes, and JSON data."""

    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    """Extra lines printed verbatim after the notes (breakdowns, diagnostics)."""
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "rows": [row for table in self.tables for row in table.rows],
            "checks": [c.to_json() for c in self.checks],
            "notes": self.notes,
            "details": self.details,
            "errors": self.errors,
        }


# -- the section registry -------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A registered group of benchmarks."""

    name: str
    title: str
    run: Callable[[argparse.Namespace], SectionResult]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    available: Callable[[argparse.Namespace], str | None] | None = None
    """Returns why the section cannot run (e.g. no Redis), or None when it can."""
    default: bool = True
    """Run it when ``--only`` is not given."""


SECTIONS: dict[str, Section] = {}


def section(
    name: str,
    title: str,
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    available: Callable[[argparse.Namespace], str | None] | None = None,
    default: bool = True,
) -> Callable[
    [Callable[[argparse.Namespace], SectionResult]], Callable[[argparse.Namespace], SectionResult]
]:
    """Register ``run`` as the section ``name``."""

    def register(
        run: Callable[[argparse.Namespace], SectionResult],
    ) -> Callable[[argparse.Namespace], SectionResult]:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} is registered twice")
        SECTIONS[name] = Section(name, title, run, add_arguments, available, default)
        return run

    return register


# -- timing ---------------------------------------------------------------------------------


def log(message: str, *, quiet: bool = False) -> None:
    """Progress on stderr, so stdout holds only the report."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run_fresh(measure: Measurement) -> float:
    """One measurement in a fresh event loop, after a full garbage collection."""
    gc.collect()
    return asyncio.run(measure())


@dataclass
class Samples:
    """The repeated timings of one contender."""

    label: str
    n: int
    seconds: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def throughputs(self) -> list[float]:
        return [self.n / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.throughputs)

    @property
    def best(self) -> float:
        return max(self.throughputs)


def interleaved(
    contenders: Sequence[tuple[str, Measurement]],
    *,
    n: int,
    repeat: int,
    warmup: Sequence[Measurement] = (),
    quiet: bool = False,
) -> dict[str, Samples]:
    """Time every contender ``repeat`` times, round-robin, each in a fresh loop.

    Round ``r`` starts with contender ``r mod len``, so neither machine noise nor the
    position in the round favours one contender. A contender that raises is recorded with
    its error and left out of the later rounds.
    """
    for measure in warmup:
        run_fresh(measure)
    samples = {label: Samples(label, n) for label, _ in contenders}
    for r in range(repeat):
        shift = r % len(contenders)
        order = [*contenders[shift:], *contenders[:shift]]
        timings: list[str] = []
        for label, measure in order:
            sample = samples[label]
            if sample.error is not None:
                continue
            try:
                seconds = run_fresh(measure)
            except Exception as exc:
                sample.error = f"{type(exc).__name__}: {exc}"
                timings.append(f"{label}=ERROR")
                continue
            sample.seconds.append(seconds)
            timings.append(f"{label}={seconds:.3f}s")
        log(f"  round {r + 1}/{repeat}: " + ", ".join(timings), quiet=quiet)
    return samples


# -- formatting -----------------------------------------------------------------------------


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def fmt_us(value: float) -> str:
    return f"{value:.2f}"


def fmt_bytes(value: float) -> str:
    return f"{value:,.0f}"


# -- machine information ----------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*argv: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """Where and when the numbers were taken: put next to any figure you quote."""
    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = None
    status = _git("status", "--porcelain", "--", "src")
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "versions": {
            dist: _version(dist) for dist in ("runtrack", "aiojobs", "structlog", "pydantic")
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_src_dirty": None if status is None else bool(status),
        "perf_counter_resolution": time.get_clock_info("perf_counter").resolution,
    }
