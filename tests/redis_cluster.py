"""A throwaway Redis Cluster for the tests: three masters on free loopback ports.

`start_cluster` launches three ``redis-server`` processes with ``cluster-enabled yes``,
each in a temporary directory of its own, joins them with ``redis-cli --cluster create``,
waits until every node reports ``cluster_state:ok`` and returns a `RedisCluster` whose
`url` is a ``redis+cluster://`` URL. `RedisCluster.stop` terminates the processes and
deletes the directories. The session fixture ``redis_cluster_url`` (``conftest.py``)
starts one cluster per test session; tests that need the URL outside a fixture (a
registry factory) read it with `cluster_url`.

Without ``redis-server`` / ``redis-cli`` on PATH the tests are skipped with the reason
(failed when ``CI`` is set, see `skip_or_fail`).
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from registries import skip_or_fail

__all__ = ["RedisCluster", "cluster_url", "set_cluster_url", "start_cluster"]

MASTERS: Final = 3
#: How long the cluster may take to start and agree (a busy 2-core machine is slow).
_START_TIMEOUT: Final = 60.0

#: The running session cluster's URL, under "url".
_session: dict[str, str] = {}


def set_cluster_url(url: str | None) -> None:
    """Record the running session cluster's URL (None once it stopped)."""
    _session.pop("url", None)
    if url is not None:
        _session["url"] = url


def cluster_url() -> str:
    """The session cluster's URL; the caller must have requested ``redis_cluster_url``."""
    if "url" not in _session:
        raise RuntimeError("no Redis Cluster is running: request the redis_cluster_url fixture")
    return _session["url"]


def _free_ports(count: int) -> list[int]:
    """Ports free on loopback whose cluster-bus port (port + 10000) is free as well."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclasses.dataclass
class RedisCluster:
    """A running cluster: its node processes, ports and temporary directory."""

    ports: list[int]
    directory: Path
    processes: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL of one node (redis-py discovers the others)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def stop(self) -> None:
        """Terminate every node and delete the directory. Safe to call twice."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout + done.stderr


def _wait(cluster: RedisCluster, ready: str, *args: str) -> None:
    """Wait until every node answers ``args`` with text containing ``ready``."""
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        for port, process in zip(cluster.ports, cluster.processes, strict=True):
            if process.poll() is not None:
                log = (cluster.directory / str(port) / "log").read_text(errors="replace")
                raise RuntimeError(f"a redis-server of the test cluster exited: {log[-2000:]}")
        answers = [_cli(port, *args) for port in cluster.ports]
        if all(ready in answer for answer in answers):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test Redis Cluster is not ready: {answers}")
        time.sleep(0.1)


def start_cluster() -> RedisCluster:
    """Start a cluster of `MASTERS` masters (no replicas) and wait until it serves.

    Skips (or on CI fails) the calling test when redis-server or redis-cli is missing.
    """
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        skip_or_fail(f"{' and '.join(missing)} not on PATH: cannot start a Redis Cluster")
    directory = Path(tempfile.mkdtemp(prefix="runtrack-cluster-"))
    cluster = RedisCluster(_free_ports(MASTERS), directory, [])
    try:
        for port in cluster.ports:
            node = directory / str(port)
            node.mkdir()
            cluster.processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node / "nodes.conf"),
                        "--cluster-node-timeout",
                        "5000",
                        "--dir",
                        str(node),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--logfile",
                        str(node / "log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait(cluster, "PONG", "ping")
        created = _cli(
            cluster.ports[0],
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in cluster.ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        )
        if "All 16384 slots covered" not in created:
            raise RuntimeError(f"redis-cli --cluster create failed: {created}")
        _wait(cluster, "cluster_state:ok", "cluster", "info")
    except BaseException:
        cluster.stop()
        raise
    return cluster
