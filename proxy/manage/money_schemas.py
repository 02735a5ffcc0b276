"""JSON Schemas of the money replies (prices, unpriced models, usage reports)."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_USD: Schema = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?$",
    "description": "Exact dollars, as text.",
}
_RATE: Schema = {
    "type": ["string", "null"],
    "pattern": r"^[0-9]+(\.[0-9]+)?$",
    "description": "Dollars per million tokens, exact, as text; null: the default rate.",
}
_INT: Schema = {"type": "integer"}
_OPT_STR: Schema = {"type": ["string", "null"]}


def _object(description: str, **properties: Schema) -> Schema:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_PRICE = _object(
    "One price row: a model's rates from effective_from on.",
    model={"type": "string"},
    project_id={**_OPT_STR, "description": "null: a price for every project."},
    effective_from={"type": "string", "format": "date-time"},
    input=_RATE,
    cached_input=_RATE,
    output=_RATE,
    reasoning=_RATE,
    cache_write=_RATE,
    source={"enum": ["shipped", "operator"]},
)
_COUNTS = {
    "requests": _INT,
    "rejected": _INT,
    "cache_hits": _INT,
    "prompt_tokens": _INT,
    "completion_tokens": _INT,
    "cached_tokens": _INT,
    "reasoning_tokens": _INT,
    "total_tokens": _INT,
    "unpriced": {"type": "integer", "description": "Requests whose model had no price."},
    "priced_cost_usd": {**_USD, "description": "The cost of the priced requests, exact."},
    "cost_usd": {
        **_USD,
        "type": ["string", "null"],
        "description": "The cost, exact; null when some requests were unpriced.",
    },
}
_USAGE_ROW: Schema = {
    "type": "object",
    "description": "One model's, day's or token's totals (the key is named by `by`).",
    "properties": {
        "model": {"type": "string"},
        "day": {"type": "string", "format": "date"},
        "token": {"type": "string"},
        **_COUNTS,
    },
    "required": list(_COUNTS),
    "minProperties": len(_COUNTS) + 1,
    "maxProperties": len(_COUNTS) + 1,
    "additionalProperties": False,
}

MONEY_SCHEMAS: dict[str, Schema] = {
    "Price": _PRICE,
    "PriceList": _object("Price rows.", data={"type": "array", "items": _ref("Price")}),
    "PricesImported": _object("How many rows were added or replaced.", imported=_INT),
    "PriceExport": _object(
        "Every price row, shipped and the operator's, as `prices import` reads them.",
        version={"type": "string", "description": "The shipped table's version (its date)."},
        prices={"type": "array", "items": _ref("Price")},
    ),
    "UnpricedList": _object(
        "Models requested without a price, most requested first.",
        data={
            "type": "array",
            "items": _object(
                "One model of one project.",
                model={"type": "string"},
                project_id={"type": "string"},
                requests=_INT,
                first_day={"type": "string", "format": "date"},
                last_day={"type": "string", "format": "date"},
            ),
        },
    ),
    "UsageReport": _object(
        "Totals from the daily rollups, per `by`, and over all.",
        project_id=_OPT_STR,
        token_id=_OPT_STR,
        by={"enum": ["model", "day", "token"]},
        since={"type": ["string", "null"], "format": "date"},
        data={"type": "array", "items": _USAGE_ROW},
        total=_object("The sum over every row.", **_COUNTS),
    ),
}
