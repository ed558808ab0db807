"""The work ``runtrack demo`` starts: runs that complete, fail, time out, retry, get cancelled."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from runtrack._context import current_run, report_progress
from runtrack._manager import BackgroundTaskManager
from runtrack._models import Retry, Run

__all__ = ["GROUP_LIMITS", "MAX_CONCURRENCY", "cancel_later", "start_runs"]

MAX_CONCURRENCY: Final = 5
GROUP_LIMITS: Final = {"exports": 2}

# -- the work ---------------------------------------------------------------------------------


async def fetch_prices(symbol: str, seconds: float) -> dict[str, Any]:
    """Completes with a JSON result, reporting progress on the way."""
    for step in range(1, 5):
        await asyncio.sleep(seconds / 4)
        await report_progress(step / 4, f"{symbol}: batch {step}/4")
    return {"symbol": symbol, "price": round(100 + 7.3 * len(symbol), 2)}


async def export_report(customer: str, pages: int) -> str:
    """Runs in the ``exports`` group, of which at most two run at once."""
    for page in range(1, pages + 1):
        await asyncio.sleep(0.3)
        await report_progress(page / pages, f"page {page}/{pages}")
    return f"{customer}.pdf ({pages} pages)"


async def charge_card(order: int, amount: float) -> str:
    """Fails with a ValueError when the amount is over the limit."""
    await asyncio.sleep(0.6)
    if amount > 500:
        raise ValueError(f"card declined for order {order}: {amount:.2f} is over the limit")
    return f"charged {amount:.2f}"


async def rebuild_index() -> None:
    """Takes far longer than its timeout, so it is recorded FAILED with TimeoutError."""
    for step in range(1, 101):
        await asyncio.sleep(0.1)
        await report_progress(step / 100, "rebuilding")


async def train_model(epochs: int) -> float:
    """Long enough that the demo cancels it while it runs."""
    for epoch in range(1, epochs + 1):
        await asyncio.sleep(0.25)
        await report_progress(epoch / epochs, f"epoch {epoch}/{epochs}")
    return 0.97


async def sync_inventory(warehouse: str) -> str:
    """Fails twice with ConnectionError, then succeeds on the third attempt."""
    attempt = current_run().attempt
    await asyncio.sleep(0.5)
    if attempt < 3:
        raise ConnectionError(f"{warehouse} API unavailable (attempt {attempt})")
    return f"{warehouse} in sync after {attempt} attempts"


async def send_email(to: str) -> str:
    """A quick run; the demo gives these different priorities."""
    await asyncio.sleep(0.4)
    return f"sent to {to}"


async def start_runs(manager: BackgroundTaskManager) -> dict[str, str]:
    """Start every run of the demo; returns the ids the demo will cancel."""
    # start_task: synchronous, returns the id at once (the run is recorded QUEUED).
    for symbol, seconds in [("ACME", 1.6), ("GLOBEX", 1.0), ("INITECH", 2.4), ("UMBRELLA", 1.2)]:
        manager.start_task(
            Run(parameters={"symbol": symbol}, tags={"team": "markets"}),
            fetch_prices(symbol, seconds),
        )
    # submit: the QUEUED record is written before it returns; fn and arguments are separate.
    training = await manager.submit(train_model, 40, tags={"team": "ml"})
    for customer, pages in [("acme", 5), ("globex", 4), ("initech", 6), ("hooli", 3)]:
        await manager.submit(
            export_report, customer, pages, group="exports", parameters={"customer": customer}
        )
    for order, amount in [(1001, 20.0), (1002, 740.0), (1003, 99.9)]:
        await manager.submit(charge_card, order, amount, parameters={"order": order})
    await manager.submit(rebuild_index, timeout=1.5)
    await manager.submit(sync_inventory, "berlin", retry=Retry(attempts=3, backoff=0.2))
    for to in ["newsletter-a@example.com", "newsletter-b@example.com"]:
        await manager.submit(send_email, to, name="send_newsletter", priority=-5)
    reminder = await manager.submit(send_email, "team@example.com", name="reminder", delay=60)
    for to in ["ceo@example.com", "ops@example.com"]:
        await manager.submit(send_email, to, name="password_reset", priority=10)
    await manager.submit(fetch_prices, "HOOLI", 0.6, priority=1)
    return {"running": training.run_id, "queued": reminder.run_id}


async def cancel_later(manager: BackgroundTaskManager, to_cancel: dict[str, str]) -> None:
    """Cancel a run mid-way and a scheduled one before it is due."""
    await asyncio.sleep(3.0)
    for run_id in to_cancel.values():
        await manager.cancel_task(run_id)
