"""Values a store may refuse: each backend stores them faithfully or raises a ValueError.

NUL characters, lone surrogates, JSON nested 40 deep and 10 MB strings go through every
write: ``add_run``, ``transition``, ``update_run``, ``append_output`` and ``write_batch``.
A backend either stores the value and reads it back unchanged, or raises a plain
`ValueError` naming the run: never `RegistryUnavailableError` (the writer would retry it
for ever), never a driver's error or a raw ``UnicodeEncodeError``. A refused write applies
nothing, and the registry keeps working: the other writes of a refused batch land when
they are applied one at a time, and later writes succeed.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from runtrack import OutputChunk, Run, RunRegistry, RunStatus
from runtrack.registry.base import BatchWriting, RunWrite, stored_run

Q, R, C, F = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED, RunStatus.FAILED


def nested(depth: int) -> Any:
    """A JSON value ``depth`` arrays and objects deep."""
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


#: The hostile values, by test id.
VALUES: dict[str, Any] = {
    "nul": "nul\x00here",
    "surrogate": "lone \ud800 surrogate",
    "deep40": nested(40),
    "10mb": "x" * 10_000_000,
}
TEXTS = {name: value for name, value in VALUES.items() if isinstance(value, str)}


def new_id() -> str:
    return uuid.uuid4().hex


def make_run(**fields: Any) -> Run | None:
    """A run with these fields, or None if the model itself refuses them.

    Validated twice: ``Run(name=...)``, and pydantic given only a few fields, let a lone
    surrogate through in names, which the model refuses once a registry reads the run
    back with every field.
    """
    try:
        run = Run.model_validate({"run_id": new_id(), **fields})
        return Run.model_validate(run.model_dump())
    except ValidationError:
        return None


async def stored_or_refused(call: Callable[[], Awaitable[object]], run_id: str) -> bool:
    """Make ``call``; True if it stored, False if it raised a ValueError naming ``run_id``.

    A pydantic ValidationError (the registry's own check of a change, as for every
    `Run` field) counts as refused too. Anything else (a RegistryUnavailableError, a
    driver error, a UnicodeEncodeError) fails the test.
    """
    refusal: ValueError | None = None
    try:
        await call()
    except ValidationError:
        return False  # the change itself is not valid run data: nothing reached the store
    except ValueError as exc:
        refusal = exc
    if refusal is None:
        return True
    message = f"{type(refusal).__name__}: {refusal}"
    assert type(refusal) is ValueError, message
    assert "cannot store" in message or "refused" in message, message
    assert run_id in message, message
    return False


async def still_works(registry: RunRegistry) -> None:
    """A write and a read after a refusal succeed (the connection or pool is usable)."""
    run = Run(run_id=new_id(), name="after", tags={"k": "v"}, parameters={"n": 1})
    await registry.add_run(run)
    assert await registry.transition(run.run_id, R) is not None
    done = await registry.transition(run.run_id, C, result={"ok": True}, error_message="é")
    assert done is not None
    assert done.result == {"ok": True}
    await registry.append_output(run.run_id, [("stdout", "fine")])
    assert [c.text for c in await registry.get_output(run.run_id)] == ["fine"]


async def running(registry: RunRegistry) -> Run:
    run = Run(run_id=new_id(), status=R)
    await registry.add_run(run)
    return run


class TestSingleWrites:
    """add_run, transition, update_run: stored faithfully, or a ValueError and no change."""

    @pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
    async def test_add_run_parameters(self, registry: RunRegistry, value: Any) -> None:
        run = make_run(parameters={"p": value, "q": [value]})
        assert run is not None

        if await stored_or_refused(lambda: registry.add_run(run), run.run_id):
            assert await registry.get_run(run.run_id) == run
        else:
            assert await registry.get_run(run.run_id) is None
        await still_works(registry)

    @pytest.mark.parametrize("value", TEXTS.values(), ids=TEXTS.keys())
    async def test_add_run_name_and_tags(self, registry: RunRegistry, value: Any) -> None:
        candidates = [make_run(name=value), make_run(tags={"k": value}), make_run(group=value)]
        runs = [run for run in candidates if run is not None]
        if not runs:  # never reaches a store: the model refuses it (NUL, surrogate, length)
            with pytest.raises(ValidationError):
                Run(name=value)

        for run in runs:
            if await stored_or_refused(functools.partial(registry.add_run, run), run.run_id):
                assert await registry.get_run(run.run_id) == run
            else:
                assert await registry.get_run(run.run_id) is None
        await still_works(registry)

    @pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
    async def test_transition_result(self, registry: RunRegistry, value: Any) -> None:
        run = await running(registry)

        async def finish() -> None:
            assert await registry.transition(run.run_id, C, result=value) is not None

        stored = await registry.get_run(run.run_id)
        if await stored_or_refused(finish, run.run_id):
            stored = await registry.get_run(run.run_id)
            assert stored is not None
            assert (stored.status, stored.result) == (C, value)
        else:
            assert await registry.get_run(run.run_id) == stored  # nothing applied
            done = await registry.transition(run.run_id, F, error_type="ResultNotStorable")
            assert done is not None
            assert done.status is F
        await still_works(registry)

    @pytest.mark.parametrize("value", TEXTS.values(), ids=TEXTS.keys())
    async def test_transition_error_message(self, registry: RunRegistry, value: Any) -> None:
        run = await running(registry)

        async def fail() -> None:
            changes = {"error_type": "Boom", "error_message": value}
            assert await registry.transition(run.run_id, F, **changes) is not None

        if await stored_or_refused(fail, run.run_id):
            stored = await registry.get_run(run.run_id)
            assert stored is not None
            assert (stored.status, stored.error_message) == (F, value)
        else:
            assert await registry.get_run(run.run_id) == run
        await still_works(registry)

    @pytest.mark.parametrize("value", TEXTS.values(), ids=TEXTS.keys())
    async def test_update_progress_message(self, registry: RunRegistry, value: Any) -> None:
        run = await running(registry)

        async def report() -> None:
            await registry.update_run(run.run_id, progress=0.5, progress_message=value)

        if await stored_or_refused(report, run.run_id):
            stored = await registry.get_run(run.run_id)
            assert stored is not None
            assert (stored.progress, stored.progress_message) == (0.5, value)
        else:
            assert await registry.get_run(run.run_id) == run
        await still_works(registry)

    @pytest.mark.parametrize("value", TEXTS.values(), ids=TEXTS.keys())
    async def test_append_output(self, registry: RunRegistry, value: Any) -> None:
        run = await running(registry)
        await registry.append_output(run.run_id, [("stdout", "before")])
        chunks = [("stdout", "good"), ("stderr", value)]

        if await stored_or_refused(lambda: registry.append_output(run.run_id, chunks), run.run_id):
            texts = ["before", "good", value]
        else:
            texts = ["before"]  # nothing of the refused append applied
        assert [c.text for c in await registry.get_output(run.run_id)] == texts
        after = OutputChunk(seq=1, stream="stdout", text="after", at=datetime.now(UTC))
        await registry.append_output(run.run_id, [after])
        assert [c.text for c in await registry.get_output(run.run_id)] == [*texts, "after"]
        await still_works(registry)


def batch_writes(good: list[Run], bad_write: RunWrite) -> list[RunWrite]:
    """Inserts of the ``good`` runs with ``bad_write`` in the middle."""
    inserts = [RunWrite(run.run_id, stored=stored_run(run)) for run in good]
    half = len(inserts) // 2
    return [*inserts[:half], bad_write, *inserts[half:]]


async def apply_batch(registry: RunRegistry, writes: list[RunWrite], bad_id: str) -> bool:
    """Apply ``writes`` as one batch, or (refused) one at a time; True if all stored.

    A refused batch applies nothing; retried one at a time, every write but the bad one
    applies, and the bad one is stored or refused on its own.
    """
    assert isinstance(registry, BatchWriting)
    refusal: ValueError | None = None
    try:
        applied = await registry.write_batch(writes)
    except ValueError as exc:
        refusal = exc
    if refusal is None:
        assert applied == [True] * len(writes)
        return True
    assert type(refusal) is ValueError, f"{type(refusal).__name__}: {refusal}"
    assert bad_id in str(refusal), str(refusal)
    for write in writes:
        if write.inserts:
            assert await registry.get_run(write.run_id) is None, "a refused batch applied"
    stored = True
    for write in writes:
        if write.run_id == bad_id:
            stored = await stored_or_refused(
                functools.partial(registry.write_batch, [write]), bad_id
            )
        else:
            assert await registry.write_batch([write]) == [True]
    return stored


class TestBatches:
    """A refused write fails its batch with a ValueError; alone, the others land."""

    @pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
    async def test_result_among_inserts(self, registry: RunRegistry, value: Any) -> None:
        bad = await running(registry)
        good = [Run(run_id=new_id(), name=f"good-{i}", tags={"i": str(i)}) for i in range(4)]
        bad_write = RunWrite(bad.run_id, to=C, expect=frozenset({R}), changes={"result": value})

        stored = await apply_batch(registry, batch_writes(good, bad_write), bad.run_id)

        for run in good:
            assert await registry.get_run(run.run_id) == run
        found = await registry.get_run(bad.run_id)
        assert found is not None
        if stored:
            assert (found.status, found.result) == (C, value)
        else:
            assert found == bad
        await still_works(registry)

    @pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
    async def test_insert_among_inserts(self, registry: RunRegistry, value: Any) -> None:
        bad = make_run(parameters={"p": value})
        assert bad is not None
        good = [Run(run_id=new_id(), name=f"good-{i}") for i in range(4)]
        bad_write = RunWrite(bad.run_id, stored=stored_run(bad))

        stored = await apply_batch(registry, batch_writes(good, bad_write), bad.run_id)

        for run in good:
            assert await registry.get_run(run.run_id) == run
        assert await registry.get_run(bad.run_id) == (bad if stored else None)
        await still_works(registry)

    @pytest.mark.parametrize("value", TEXTS.values(), ids=TEXTS.keys())
    async def test_messages_among_inserts(self, registry: RunRegistry, value: Any) -> None:
        bad = await running(registry)
        good = [Run(run_id=new_id(), name=f"good-{i}") for i in range(4)]
        changes = {"error_type": "Boom", "error_message": value, "progress_message": value}
        bad_write = RunWrite(bad.run_id, to=F, expect=frozenset({R}), changes=changes)

        stored = await apply_batch(registry, batch_writes(good, bad_write), bad.run_id)

        for run in good:
            assert await registry.get_run(run.run_id) == run
        found = await registry.get_run(bad.run_id)
        assert found is not None
        if stored:
            assert (found.status, found.error_message, found.progress_message) == (F, value, value)
        else:
            assert found == bad
        await still_works(registry)
