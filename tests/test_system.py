"""`runtrack.system_stats`: the machine's load and memory, and this process's RSS."""

from __future__ import annotations

import os

import psutil

from runtrack import SystemStats, system_stats


def test_reads_the_machine_and_this_process() -> None:
    stats = system_stats()
    assert isinstance(stats, SystemStats)
    assert stats.cpu_count == os.cpu_count()
    assert stats.memory_total_bytes == psutil.virtual_memory().total
    assert 0 < stats.memory_available_bytes <= stats.memory_total_bytes
    assert 0 <= stats.memory_percent <= 100
    assert min(stats.load_1m, stats.load_5m, stats.load_15m) >= 0


def test_process_memory_grows_with_what_the_process_holds() -> None:
    before = system_stats().process_rss_bytes
    block = b"x" * (64 * 1024 * 1024)  # written, so resident
    try:
        assert system_stats().process_rss_bytes >= before + 32 * 1024 * 1024
    finally:
        del block


def test_round_trips_as_json() -> None:
    stats = system_stats()
    assert SystemStats.model_validate_json(stats.model_dump_json()) == stats
