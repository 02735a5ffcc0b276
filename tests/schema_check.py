"""Just enough JSON Schema to hold the management API's replies to its published OpenAPI schemas."""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def check(value: Any, schema: dict[str, Any], document: dict[str, Any], at: str = "$") -> None:
    """Raise AssertionError naming the first place ``value`` breaks ``schema``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        check(value, document["components"]["schemas"][name], document, at)
        return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is(value, t) for t in types), f"{at}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{at}: {value!r} not in {schema['enum']}"
    if "const" in schema:
        assert value == schema["const"], f"{at}: {value!r} != {schema['const']!r}"
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        missing = set(schema.get("required", ())) - set(value)
        assert not missing, f"{at}: missing {sorted(missing)}"
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(props)
            assert not extra, f"{at}: undocumented {sorted(extra)}"
        for key, sub in props.items():
            if key in value:
                check(value[key], sub, document, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(item, schema["items"], document, f"{at}[{i}]")
