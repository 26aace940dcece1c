"""The lab file's reference table, generated from its models (spec.py), so
that docs/lab-file.md cannot drift from what is accepted. Pure.

    python -m bridgelab.model.lab_reference   # prints the Markdown table
"""

from __future__ import annotations

import sys
from typing import Any

from .spec import Lab

_FORMATS = {"ipv4": "IPv4 address", "ipv4interface": "IPv4 address/prefix", "ipv4network": "IPv4 network/prefix",
            "hostname": "DNS name"}


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the schema behind refs and `X | None`, whether null is allowed)."""
    nullable = False
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        if len(options) == 1:
            schema = {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
        else:
            options = [_resolve(o, defs)[0] for o in options]
            schema = {**schema, "enum": [v for o in options for v in o.get("enum", [o.get("const")])]}
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema, nullable


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if len(options) > 1 and not all({"enum", "const", "$ref"} & set(o) for o in options):
        return " or ".join(_type(o, defs) for o in options)  # one of several kinds, not of several values
    schema, _ = _resolve(schema, defs)
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if schema.get("type") == "array":
        most = f", at most {schema['maxItems']}" if "maxItems" in schema else ""
        return f"list of {_type(schema['items'], defs)}{most}"
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    kind = {"string": "text", "integer": "integer", "number": "number", "boolean": "true \\| false",
            "object": "mapping"}.get(schema.get("type", ""), "mapping" if "properties" in schema else "text")
    bounds = [f"{name} {schema[key]}" for key, name in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                        ("maximum", "≤"))
              if key in schema]
    if "maxLength" in schema:
        bounds.append(f"{schema.get('minLength', 0)}-{schema['maxLength']} characters")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _default(schema: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    value = schema.get("default")
    if value is None or value == [] or isinstance(value, dict):
        return "unset" if value is None else ("`[]`" if value == [] else "see below")
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def rows(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    required = set(schema.get("required", []))
    for key, prop in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        inner, _ = _resolve(prop, defs)
        nested = inner.get("items") if inner.get("type") == "array" else inner
        nested, _ = _resolve(nested or {}, defs)
        description = (prop.get("description") or inner.get("description") or "").replace("|", "\\|")
        if "properties" in nested:
            suffix = "[]." if inner.get("type") == "array" else "."
            kind = "list" if inner.get("type") == "array" else "mapping"
            out.append((path, kind, _default(prop, key in required), description))
            out += rows(nested, defs, path + suffix)
        else:
            out.append((path, _type(prop, defs), _default(prop, key in required), description))
    return out


def markdown_table() -> str:
    schema = Lab.model_json_schema()
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows(schema, schema.get("$defs", {}))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
