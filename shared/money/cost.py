"""The cost of one request from its usage and the price in force: exact, or unknown (None)."""

from __future__ import annotations

from shared.clock import from_epoch
from shared.events import UNPRICED, RequestEvent
from shared.money.prices import PriceBook, PriceRow

__all__ = ["UNPRICED", "cost_picos", "event_cost"]


def cost_picos(
    row: PriceRow, *, prompt: int, completion: int, cached: int = 0, reasoning: int = 0
) -> int:
    """Pico-dollars for these token counts at ``row``'s rates. ``cached`` is part of
    ``prompt`` and ``reasoning`` part of ``completion``, as OpenAI reports them; each part is
    priced at its own rate and the rest at the plain one."""
    cached = min(max(cached, 0), prompt)
    reasoning = min(max(reasoning, 0), completion)
    cached_rate = row.input if row.cached_input is None else row.cached_input
    reasoning_rate = row.output if row.reasoning is None else row.reasoning
    return (
        (prompt - cached) * row.input
        + cached * cached_rate
        + (completion - reasoning) * row.output
        + reasoning * reasoning_rate
    )


def event_cost(event: RequestEvent, book: PriceBook) -> int:
    """The cost of a final event in pico-dollars, or ``UNPRICED``.

    A cache hit cost nothing (the upstream was not called). A request without tokens that
    the upstream could not have billed (not a POST, or not a success) costs nothing. Anything
    else needs a price for its model: without one its cost is unknown, never zero."""
    if event.cache_status == "hit":
        return 0
    tokens = event.prompt_tokens + event.completion_tokens
    if tokens == 0 and (event.method != "POST" or not 200 <= event.status < 300):
        return 0
    row = book.lookup(event.model, event.project_id, from_epoch(event.ts))
    if row is None:
        return UNPRICED
    return cost_picos(
        row,
        prompt=event.prompt_tokens,
        completion=event.completion_tokens,
        cached=event.cached_tokens,
        reasoning=event.reasoning_tokens,
    )
