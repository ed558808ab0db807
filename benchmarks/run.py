"""runtrack benchmarks: ``python benchmarks/run.py [--only core,memory] [--n N] [--repeat R]``.

Prints a report on stdout (progress goes to stderr) and writes the results as JSON
(``--json``, default ``benchmarks/results/latest.json``). Targets are informational: the
exit code is 0 unless a benchmark itself failed (raised, or runs went missing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness

#: Modules whose import registers sections, in report order. Add new sections here.
SECTION_MODULES = (
    "core",
    "memory",
    "commands",
    "persist_redis",
    "persist_postgres",
    "persist_sqlite",
    "persist_mariadb",
    "leases",
    "cancel",
    "durable",
)

LOGGING_NOTE = (
    "Logging is left unconfigured, as runtrack's defaults leave it (silent); the core "
    "section also measures runtrack with structlog and with stdlib logging at INFO."
)


def load_sections() -> dict[str, _harness.Section]:
    for module in SECTION_MODULES:
        importlib.import_module(module)
    return _harness.SECTIONS


def parse_args(sections: dict[str, _harness.Section], argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark runtrack against raw asyncio and aiojobs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated sections to run (default: every default section): "
        + ", ".join(sections),
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=_harness.REPO_ROOT / "benchmarks" / "results" / "latest.json",
        help="where to write the results as JSON ('-' for none)",
    )
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    for s in sections.values():
        if s.add_arguments is not None:
            s.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.only is None:
        args.selected = [name for name, s in sections.items() if s.default]
    else:
        args.selected = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in args.selected if name not in sections]
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    return args


def banner(text: str) -> str:
    return f"\n{text}\n{'=' * len(text)}"


def main(argv: list[str] | None = None) -> int:
    sections = load_sections()
    args = parse_args(sections, argv)
    if args.list:
        for s in sections.values():
            print(f"{s.name:10} {s.title}{'' if s.default else ' (not run by default)'}")
        return 0

    machine = _harness.machine_info()
    print("runtrack benchmarks")
    print(
        f"  {machine['date']}  Python {machine['python']} ({machine['implementation']})  "
        f"{machine['platform']}  cpus={machine['cpu_count']} (usable {machine['usable_cpus']})"
    )
    versions = "  ".join(f"{k} {v}" for k, v in machine["versions"].items())
    dirty = " (src has uncommitted changes)" if machine["git_src_dirty"] else ""
    print(f"  {versions}  git {machine['git_commit']}{dirty}")
    print(f"  {LOGGING_NOTE}")

    results: dict[str, Any] = {}
    failed = False
    for name in args.selected:
        s = sections[name]
        print(banner(f"[{name}] {s.title}"))
        reason = s.available(args) if s.available is not None else None
        if reason is not None:
            print(f"  skipped: {reason}")
            results[name] = {"title": s.title, "skipped": reason}
            continue
        _harness.log(f"[{name}] running...", quiet=args.quiet)
        started = time.perf_counter()
        result = s.run(args)
        elapsed = time.perf_counter() - started
        for table in result.tables:
            print(table.render())
        if result.checks:
            print()
            for check in result.checks:
                verdict = "PASS" if check.passed else "FAIL"
                print(f"  {verdict}  {check.name}: {check.detail}")
        if result.errors:
            failed = True
            print()
            for error in result.errors:
                print(f"  ERROR  {error}")
        if result.notes:
            print()
            for note in result.notes:
                print(f"  * {note}")
        if result.details:
            print()
            for line in result.details:
                print(line)
        print(f"  ({name} took {elapsed:.1f}s)")
        results[name] = {"title": s.title, "seconds": elapsed, **result.to_json()}

    print("\n  Targets are informational: PASS/FAIL never changes the exit code.")
    if str(args.json) != "-":
        document = {
            "schema": 1,
            "machine": machine,
            "logging": "not configured (core: also structlog and stdlib logging at INFO)",
            "args": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in {"list", "quiet"}
            },
            "sections": results,
        }
        path: Path = args.json
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"  Results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
