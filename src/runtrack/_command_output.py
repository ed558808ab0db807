"""The output of a command run: decoded, cut into chunks, bounded, written in batches.

`CommandOutput` takes the bytes a command writes to stdout and stderr as they arrive (it
never blocks the pipes), decodes them as UTF-8 (invalid bytes become U+FFFD, characters
split across reads survive), cuts them into chunks at line ends (and every
`chunk_chars` characters of a longer line), and keeps only the newest ``limit`` bytes of
text. A background loop writes the chunks to the registry in batches; while the registry
is unreachable it keeps reading and retries with backoff, and chunks that fell out of the
limit meanwhile are never written. A write that failed without saying whether it landed (a
reply lost with the connection) is checked by a read before it is sent again, so every
chunk is stored once. Chunks already written that fall out are deleted from
registries that implement `OutputTrimming`.
"""

from __future__ import annotations

import asyncio
import codecs
from collections import deque
from typing import Final

from runtrack._exceptions import RunNotFoundError
from runtrack._logging import Logger
from runtrack._models import OutputChunk
from runtrack.registry.base import OutputTrimming, RunRegistry

__all__ = ["CHUNK_CHARS", "CommandOutput"]

#: Most characters in one chunk: a longer line is split.
CHUNK_CHARS: Final = 64 * 1024
#: Seconds between writes of the chunks produced meanwhile.
FLUSH_INTERVAL: Final = 0.05
#: Most chunks in one write; as many unwritten chunks trigger a write before the interval
#: ends. (Bytes need no trigger: what is over the limit is dropped before it is written.)
MAX_BATCH: Final = 5000
#: Longest wait between two attempts while the registry is unreachable.
MAX_BACKOFF: Final = 2.0
#: Characters kept of the last stderr line, for the failure message.
LAST_LINE_CHARS: Final = 500

_Chunk = tuple[str, str, int]  # stream, text, UTF-8 bytes


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _tail(text: str, limit: int) -> str:
    """The end of ``text`` that fits in ``limit`` UTF-8 bytes."""
    if text.isascii():
        return text[-limit:] if limit else ""
    data = text.encode()[-limit:] if limit else b""
    return data.decode(errors="ignore")  # a character cut at the start is left out


class _Stream:
    """One pipe's incremental decoder and the partial line it holds."""

    __slots__ = ("decoder", "name", "partial", "stale")

    def __init__(self, name: str) -> None:
        self.name = name
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""
        self.stale = False  # the partial line waited a whole flush interval


class CommandOutput:
    """The newest ``limit`` bytes of a command's output, written to the registry in batches.

    Args:
        registry: Where the run's output goes (`RunRegistry.append_output`).
        run_id: The run.
        limit: Most bytes of text kept, here and (if it implements `OutputTrimming`) in
            the registry.
        log: Where problems with the registry are logged.
    """

    def __init__(self, registry: RunRegistry, run_id: str, limit: int, log: Logger) -> None:
        self._registry = registry
        self._run_id = run_id
        self._limit = limit
        self._log = log
        self._chunk_chars = max(1, min(CHUNK_CHARS, limit // 4))  # a chunk fits the limit
        self._streams = {name: _Stream(name) for name in ("stdout", "stderr")}
        self._pending: deque[_Chunk] = deque()  # not handed to the registry yet
        self._inflight: list[_Chunk] = []  # being written
        self._inflight_dropped = 0  # how many of its first chunks fell out meanwhile
        self._unsure = False  # the in-flight write failed without saying whether it landed
        self._written: deque[tuple[int, int]] = deque()  # (seq, bytes) kept in the registry
        self._kept = 0  # bytes of every chunk kept: pending, in flight and written
        self._trim_from = 0  # the oldest seq the registry should keep
        self._trimmed_to = 0
        self._last_seq = 0  # the newest seq written
        self._trims = isinstance(registry, OutputTrimming)
        self._gone = False  # the run was deleted: nothing more is written
        self._closing = False
        self._wake = asyncio.Event()
        self.truncated = False
        self.last_stderr_line = ""

    # -- reading (synchronous: called by the pipe protocols) --------------------------------

    def feed(self, stream: str, data: bytes) -> None:
        """Decode bytes read from ``stream`` and keep the complete lines as chunks."""
        s = self._streams[stream]
        text = s.decoder.decode(data)
        if not text:
            return
        s.stale = False
        if s.partial:
            text = s.partial + text
        lines = text.split("\n")
        partial = lines.pop()
        for line in lines:
            self._line(stream, line + "\n")
        chunk = self._chunk_chars
        while len(partial) >= chunk:
            self._add(stream, partial[:chunk])
            partial = partial[chunk:]
        s.partial = partial

    def end(self, stream: str) -> None:
        """``stream`` was closed: keep what its decoder and partial line still hold."""
        s = self._streams[stream]
        s.partial += s.decoder.decode(b"", final=True)
        if s.partial:
            self._line(stream, s.partial)
            s.partial = ""

    def _line(self, stream: str, line: str) -> None:
        chunk = self._chunk_chars
        if stream == "stderr" and not line.isspace():
            self.last_stderr_line = line.strip()[-LAST_LINE_CHARS:]
        while len(line) > chunk:
            self._add(stream, line[:chunk])
            line = line[chunk:]
        self._add(stream, line)

    def _add(self, stream: str, text: str) -> None:
        if "\x00" in text:  # PostgreSQL cannot store NUL: show it as the decoder shows junk
            text = text.replace("\x00", "\ufffd")
        size = _size(text)
        if size > self._limit:
            self.truncated = True
            text = _tail(text, self._limit)
            size = _size(text)
            if not text:
                return
        self._pending.append((stream, text, size))
        self._kept += size
        while self._kept > self._limit:
            self._drop_oldest()
        if len(self._pending) >= MAX_BATCH:
            self._wake.set()

    def _drop_oldest(self) -> None:
        self.truncated = True
        if self._written:
            seq, size = self._written.popleft()
            self._trim_from = seq + 1
        elif self._inflight_dropped < len(self._inflight):
            size = self._inflight[self._inflight_dropped][2]
            self._inflight_dropped += 1
        else:
            size = self._pending.popleft()[2]
        self._kept -= size

    def _tick(self) -> None:
        """Keep as a chunk a partial line that waited a whole interval (a prompt, a bar)."""
        for s in self._streams.values():
            if s.partial and s.stale:
                self._add(s.name, s.partial)
                s.partial = ""
            s.stale = bool(s.partial)

    # -- writing --------------------------------------------------------------------------

    def _has_work(self) -> bool:
        if self._gone:
            return False
        return bool(self._pending or self._inflight) or self._trim_due()

    def _trim_due(self) -> bool:
        # The registry keeps its newest chunk: one due to go goes once newer ones are written.
        return self._trims and min(self._trim_from, self._last_seq) > self._trimmed_to

    async def run(self) -> None:
        """Write batches until `close` is called and everything kept is written.

        While the registry is unreachable, retry with backoff (the chunks wait here,
        bounded by the limit). A batch the registry refuses is logged and dropped.
        """
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            elif not self._closing:
                try:
                    async with asyncio.timeout(FLUSH_INTERVAL):
                        await self._wake.wait()
                except TimeoutError:
                    self._tick()
                self._wake.clear()
            if self._closing and not self._has_work():
                return
            try:
                await self._flush()
            except (ValueError, TypeError) as exc:  # refused: retrying would not help
                self._log.warning(
                    "command_output_refused", run_id=self._run_id, error=str(exc),
                    detail="the registry refused a batch of the command's output; it is lost",
                )  # fmt: skip
                self._trimmed_to = max(self._trimmed_to, min(self._trim_from, self._last_seq))
                delay = 0.0
            except RunNotFoundError:
                self._gone = True  # deleted while running (cleanup): nothing to write to
                self._pending.clear()
            except Exception as exc:  # unreachable: keep reading, retry
                if not delay:
                    self._log.warning(
                        "command_output_delayed", run_id=self._run_id, error=repr(exc),
                        detail="the registry is unreachable; the newest output is kept in "
                        "memory (output_limit) and written when it is back",
                    )  # fmt: skip
                delay = min(max(delay * 2, 0.1), MAX_BACKOFF)
            else:
                delay = 0.0
                if len(self._pending) >= MAX_BATCH:
                    self._wake.set()  # another full batch waits: no pause before it

    def close(self) -> None:
        """The command's pipes are closed: `run` writes what is left, then returns."""
        for name in self._streams:
            self.end(name)
        self._closing = True
        self._wake.set()

    async def _flush(self) -> None:
        if not self._inflight and self._pending:
            pending = self._pending
            take = min(len(pending), MAX_BATCH)
            self._inflight = [pending.popleft() for _ in range(take)]
            self._inflight_dropped = 0
        batch = self._inflight
        if batch:
            chunks = await self._landed(batch) if self._unsure else None
            if chunks is None:  # not written: what fell out meanwhile never will be
                batch = self._inflight = batch[self._inflight_dropped :]
                self._inflight_dropped = 0
                chunks = await self._append(batch) if batch else []
            dropped = self._inflight_dropped
            self._inflight = []
            self._inflight_dropped = 0
            for i, (chunk, (_, _, size)) in enumerate(zip(chunks, batch, strict=True)):
                if i < dropped:
                    self._trim_from = chunk.seq + 1
                else:
                    self._written.append((chunk.seq, size))
            if chunks:
                self._last_seq = chunks[-1].seq
        if self._trim_due():
            target = self._trim_from
            await self._registry.trim_output(self._run_id, keep_from_seq=target)  # type: ignore[attr-defined]
            self._trimmed_to = min(target, self._last_seq)

    async def _append(self, batch: list[_Chunk]) -> list[OutputChunk]:
        try:
            return await self._registry.append_output(
                self._run_id, [(stream, text) for stream, text, _ in batch]
            )
        except (ValueError, TypeError, RunNotFoundError):
            self._inflight = []
            self._unsure = False
            self._kept -= sum(size for _, _, size in batch[self._inflight_dropped :])
            raise
        except BaseException:
            # The write may have landed (a reply lost with the connection): the next
            # attempt reads before it writes again, so no chunk is stored twice.
            self._unsure = True
            raise

    async def _landed(self, batch: list[_Chunk]) -> list[OutputChunk] | None:
        """The chunks of ``batch`` as stored, if the failed write landed; else None.

        This run's output has one writer, and an append is all or nothing: the batch is
        stored iff what follows the newest chunk written is the batch.
        """
        stored = await self._registry.get_output(
            self._run_id, since=self._last_seq, limit=len(batch)
        )
        self._unsure = False
        if [(c.stream, c.text) for c in stored] == [(stream, text) for stream, text, _ in batch]:
            return stored
        return None
