"""The JSON contract in tests (issue 26.4): validate an output against its checked-in schema
(docs/schemas/<kind>.schema.json) with a small validator for the JSON Schema subset those files use, and turn a
topology document back into the in-memory shapes (CPU lists, -1 for no node) that older assertions compare."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vllm_nodeagent.host.parse import parse_cpulist

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def schema(kind: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / f"{kind}.schema.json").read_text()))


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def errors(value: Any, sch: dict[str, Any], root: dict[str, Any], where: str = "$") -> list[str]:
    """Every violation of ``sch`` (subset: $ref to #/$defs, type, enum, const, pattern, minimum, properties,
    required, additionalProperties, items)."""
    if "$ref" in sch:
        name = sch["$ref"].rsplit("/", 1)[1]
        return errors(value, root["$defs"][name], root, where)
    out: list[str] = []
    types = sch.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_type_ok(value, t) for t in names):
            return [f"{where}: {value!r:.60} is not {types}"]
    if "enum" in sch and value not in sch["enum"]:
        out.append(f"{where}: {value!r} not in {sch['enum']}")
    if "const" in sch and value != sch["const"]:
        out.append(f"{where}: {value!r} != {sch['const']!r}")
    if isinstance(value, str) and "pattern" in sch and not re.search(sch["pattern"], value):
        out.append(f"{where}: {value!r} does not match {sch['pattern']}")
    if isinstance(value, (int, float)) and "minimum" in sch and value < sch["minimum"]:
        out.append(f"{where}: {value} < {sch['minimum']}")
    if isinstance(value, dict):
        props = sch.get("properties", {})
        out += [f"{where}: missing {k!r}" for k in sch.get("required", []) if k not in value]
        extra = sch.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                out += errors(v, props[k], root, f"{where}.{k}")
            elif extra is False:
                out.append(f"{where}: unexpected key {k!r}")
            elif isinstance(extra, dict):
                out += errors(v, extra, root, f"{where}.{k}")
    if isinstance(value, list) and "items" in sch:
        for i, v in enumerate(value):
            out += errors(v, sch["items"], root, f"{where}[{i}]")
    return out


def check(doc: Any, kind: str) -> Any:
    """Assert ``doc`` is a valid ``kind`` output; returns it."""
    sch = schema(kind)
    problems = errors(doc, sch, sch)
    assert problems == [], problems[:10]
    return doc


_NODE_KEYS = ("numa_node", "memory_node")
_STR_KEYS = ("gpu", "uuid", "no_locality", "nvml_error")


def legacy_topology(doc: dict[str, Any]) -> dict[str, Any]:
    """Validate, then the dataclass shapes: cpulists as int lists, no node = -1, no text = ""."""
    check(doc, "topology")

    def back(value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if k.endswith("_count") or (k == "count" and "ids" in value):
                    continue
                if k in ("cpus", "local_cpus", "ids") and isinstance(v, str):
                    out[k] = parse_cpulist(v) if v else []
                elif k in _NODE_KEYS and v is None:
                    out[k] = -1
                elif k in _STR_KEYS and v is None:
                    out[k] = ""
                else:
                    out[k] = back(v)
            return out
        if isinstance(value, list):
            return [back(v) for v in value]
        return value

    doc = {k: v for k, v in doc.items() if k not in ("schema_version", "kind", "cpus_usable")}
    return dict(back(doc))
