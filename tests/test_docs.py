"""The docs cannot rot: every ```python block in README.md and docs/*.md runs, and the site builds.

Each block runs in a fresh interpreter (``python -c``), so blocks that call ``asyncio.run``
work and no block sees another's names. A block titled like a test module
(```` ```python title="test_reports.py" ````) is written to that file and run with pytest,
so the testing examples exercise runtrack's pytest plugin for real.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK_TIMEOUT = 30.0

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python(?P<attrs>(?:[ \t][^\n]*)?)\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_TITLE = re.compile(r"""title=["']([^"']+)["']""")


@dataclass(frozen=True)
class Block:
    """One ```python block of a Markdown file."""

    path: Path
    index: int
    line: int
    code: str
    title: str | None

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.index}"

    @property
    def is_test_module(self) -> bool:
        return self.title is not None and Path(self.title).name.startswith("test_")


def collect_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one file, numbered from 1, with their indentation removed."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for index, match in enumerate(_FENCE.finditer(text), start=1):
        indent = match["indent"]
        lines = match["code"].splitlines(keepends=True)
        code = "".join(line.removeprefix(indent) for line in lines)
        title = _TITLE.search(match["attrs"])
        blocks.append(
            Block(
                path=path,
                index=index,
                line=text.count("\n", 0, match.start()) + 2,
                code=code,
                title=title[1] if title else None,
            )
        )
    return blocks


BLOCKS = [block for path in DOCS if path.exists() for block in collect_blocks(path)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["NO_MKDOCS_2_WARNING"] = "1"
    return env


def _explain(block: Block, result: subprocess.CompletedProcess[str]) -> str:
    where = f"{block.path.relative_to(ROOT)}:{block.line}"
    return (
        f"the python block at {where} ({block.id}) exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


class TestCodeBlocks:
    """Every ```python block in README.md and docs/*.md runs as-is."""

    def test_blocks_were_found(self) -> None:
        assert len(BLOCKS) >= 10, [b.id for b in BLOCKS]

    @pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
    def test_block_runs(self, block: Block, tmp_path: Path) -> None:
        if block.is_test_module:
            assert block.title is not None
            module = tmp_path / Path(block.title).name
            module.write_text(block.code, encoding="utf-8")
            command = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-W",
                "error",
                "-o",
                "asyncio_mode=strict",
                "-o",
                "asyncio_default_fixture_loop_scope=function",
                "--rootdir",
                str(tmp_path),
                str(module),
            ]
        else:
            command = [sys.executable, "-c", block.code]
        with _example_keys_removed(block):
            result = subprocess.run(
                command,
                cwd=tmp_path,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
                check=False,
            )
        assert result.returncode == 0, _explain(block, result)


#: The key prefix the Redis examples use, and the server they use.
_EXAMPLE_PREFIX = "docs-example:"
_EXAMPLE_REDIS = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def _example_keys_removed(block: Block) -> Iterator[None]:
    """Remove the example keys a block that writes runs to Redis leaves (others: nothing).

    An example deletes its runs, but a registry also keeps keys of its own (its schema
    version, its managers).
    """
    if _EXAMPLE_PREFIX not in block.code:
        yield
        return
    import redis

    with redis.Redis.from_url(_EXAMPLE_REDIS) as client:
        before = set(client.scan_iter(match=f"{_EXAMPLE_PREFIX}*"))
        try:
            yield
        finally:
            left = set(client.scan_iter(match=f"{_EXAMPLE_PREFIX}*")) - before
            if left:
                client.unlink(*left)


class TestSite:
    """The documentation site builds without a warning."""

    @pytest.mark.skipif(
        importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed"
    )
    def test_mkdocs_build_strict(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    def test_api_page_covers_all_public_names(self) -> None:
        import runtrack

        api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
        documented = set(re.findall(r"^::: runtrack\.(\w+)\s*$", api, re.MULTILINE))
        missing = sorted(set(runtrack.__all__) - documented)
        assert not missing, f"add these names to docs/api.md: {missing}"
