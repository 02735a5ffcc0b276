"""The management operations on money: price rows (list, set, import, export, unpriced) and
usage reports read from the daily rollups."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from shared.clock import utcnow
from shared.errors import Conflict, NotFound, UserError
from shared.management import inputs as i
from shared.management.fields import validated
from shared.management.views import View
from shared.money.amounts import AmountError, picos_to_usd, rate_to_usd
from shared.money.prices import RATES, PriceRow, row_from_dict, shipped_rows, shipped_version
from shared.store import Project, SqlStore, Token
from shared.store.rollups import COUNTS, Rollup, RollupRow

#: The columns of a price file, as `prices export --csv` writes them and `import` reads them.
PRICE_FILE_COLUMNS = ("model", *RATES, "effective_from", "project_id")
MAX_IMPORT_ROWS = 10_000


class _Host(Protocol):
    """What these operations use of the service they are part of."""

    store: SqlStore

    async def _project(self, ref: str) -> Project: ...

    async def _token(self, ref: str) -> Token: ...

    def _audited(
        self, action: str, target_type: str, target_id: str, inp: object = None
    ) -> AbstractAsyncContextManager[Any]: ...


def price_view(row: PriceRow) -> View:
    return {
        "model": row.model,
        "project_id": row.project_id,
        "effective_from": row.effective_from.isoformat().replace("+00:00", "Z"),
        **{name: rate_to_usd(getattr(row, name)) for name in RATES},
        "source": row.source,
    }


def _counts_view(totals: Rollup) -> View:
    """Counts and costs: a total with an unpriced part is unknown (null), never a low figure;
    ``priced_cost_usd`` is what the priced requests cost."""
    out: View = {c: getattr(totals, c) for c in COUNTS if c != "cost_picousd"}
    out["priced_cost_usd"] = picos_to_usd(totals.cost_picousd)
    out["cost_usd"] = None if totals.unpriced else out["priced_cost_usd"]
    return out


def parse_price_file(data: str) -> list[PriceRow]:
    """Rows of a JSON (``{"prices": [...]}`` or a list) or CSV price file; any bad row refuses
    the whole file, naming its line."""
    text = data.strip()
    if not text:
        raise UserError("the price file is empty")
    if text.startswith(("{", "[")):
        try:
            doc = json.loads(text, parse_float=str)  # exact decimals, never floats
        except (ValueError, RecursionError) as exc:
            raise UserError(f"the price file is not valid JSON: {exc}") from None
        items = doc.get("prices") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise UserError('a JSON price file holds {"prices": [...]}')
        numbered: Iterable[tuple[int, Any]] = enumerate(items, 1)
        where = "row"
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = {"model", "input", "output"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"the price file's header lacks {', '.join(sorted(missing))}")
        numbered = ((n, row) for n, row in enumerate(reader, 2))
        where = "line"
    try:
        return _rows(numbered, where)
    except csv.Error as exc:
        raise UserError(f"the price file is not valid CSV: {exc}") from None


def _rows(numbered: Iterable[tuple[int, Any]], where: str) -> list[PriceRow]:
    rows: list[PriceRow] = []
    for n, item in numbered:
        if len(rows) >= MAX_IMPORT_ROWS:
            raise UserError(f"a price file holds at most {MAX_IMPORT_ROWS} rows")
        if not isinstance(item, dict):
            raise UserError(f"{where} {n} of the price file is not an object")
        try:
            rows.append(row_from_dict({k: v for k, v in item.items() if k != "source"}))
        except AmountError as exc:
            raise UserError(f"{where} {n} of the price file: {exc}") from None
    return rows


class MoneyOperations:
    """Mixed into ``Management``."""

    async def list_prices(self: _Host, inp: i.ListPrices) -> View:
        rows = await self.store.list_prices()
        if inp.shipped:
            rows = [*shipped_rows(), *rows]
        if inp.model is not None:
            rows = [r for r in rows if r.model == inp.model]
        return {"data": [price_view(r) for r in rows]}

    async def set_price(self: _Host, inp: i.SetPrice) -> View:
        inp = validated(inp)
        async with self._audited("price.set", "price", inp.model, inp) as audit:
            project_id = None
            if inp.project_id is not None:
                project_id = (await self._project(inp.project_id)).id
                audit.details["project_id"] = project_id
            fields = {name: getattr(inp, name) for name in RATES}
            try:
                row = row_from_dict(
                    {
                        "model": inp.model,
                        **fields,
                        "effective_from": inp.effective_from or utcnow(),
                        "project_id": project_id,
                    }
                )
            except AmountError as exc:
                raise UserError(str(exc)) from None
            await self.store.set_prices([row])
        return price_view(row)

    async def import_prices(self: _Host, inp: i.ImportPrices) -> View:
        rows = parse_price_file(inp.data)
        async with self._audited("price.import", "price", "") as audit:
            for n, row in enumerate(rows):
                if row.project_id is not None:  # by id or name, as everywhere
                    try:
                        project = await self._project(row.project_id)
                    except (NotFound, Conflict) as exc:  # a bad file: 400, naming the row
                        raise UserError(f"row {n + 1} of the price file: {exc.message}") from None
                    rows[n] = PriceRow(**{**_fields(row), "project_id": project.id})
            await self.store.set_prices(rows)
            audit.details["rows"] = len(rows)
        return {"imported": len(rows)}

    async def export_prices(self: _Host, inp: i.NoInput) -> View:
        rows = [*shipped_rows(), *await self.store.list_prices()]
        return {"version": shipped_version(), "prices": [price_view(r) for r in rows]}

    async def unpriced_models(self: _Host, inp: i.UnpricedQuery) -> View:
        project_id = (await self._project(inp.project_id)).id if inp.project_id else None
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for r in await self.store.lagging().list_rollups(project_id=project_id, since=inp.since):
            if not r.totals.unpriced:
                continue
            seen = found.setdefault(
                (r.model, r.project_id),
                {"model": r.model, "project_id": r.project_id, "requests": 0, "first_day": r.day},
            )
            seen["requests"] += r.totals.unpriced
            seen["last_day"] = r.day
        data = sorted(found.values(), key=lambda v: (-v["requests"], v["model"]))
        for v in data:
            v["first_day"], v["last_day"] = str(v["first_day"]), str(v["last_day"])
        return {"data": data}

    async def usage_report(self: _Host, inp: i.UsageQuery) -> View:
        inp = validated(inp)
        if (inp.project_id is None) == (inp.token_id is None):
            raise UserError("give a project_id or a token_id (exactly one)")
        project_id = token_id = None
        if inp.project_id is not None:
            project_id = (await self._project(inp.project_id)).id
        else:
            token_id = (await self._token(inp.token_id or "")).id
        rows = await self.store.lagging().list_rollups(
            project_id=project_id, token_id=token_id, since=inp.since
        )
        return {
            "project_id": project_id,
            "token_id": token_id,
            "by": inp.by,
            "since": inp.since.date().isoformat() if isinstance(inp.since, datetime) else None,
            "data": [
                {inp.by: key, **_counts_view(totals)}
                for key, totals in _grouped(rows, inp.by).items()
            ],
            "total": _counts_view(_sum(r.totals for r in rows)),
        }


def _grouped(rows: list[RollupRow], by: str) -> dict[str, Rollup]:
    out: dict[str, Rollup] = {}
    for row in rows:
        key = str(row.day) if by == "day" else row.model if by == "model" else row.token_id
        out[key] = _sum((out.get(key, Rollup()), row.totals))
    return dict(sorted(out.items()))


def _sum(parts: Iterable[Rollup]) -> Rollup:
    total = Rollup()
    for part in parts:
        for c in COUNTS:
            setattr(total, c, getattr(total, c) + getattr(part, c))
    return total


def _fields(row: PriceRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__dataclass_fields__}
