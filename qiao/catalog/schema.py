"""JSON Schema from the catalog, and the compiled validators the nodes check payloads with.

A resource's items (信息项), each bound to a data element (数据元), say what one record is:
its fields, their types, lengths, patterns, code lists and named formats. ``derive_schemas``
turns that into JSON Schema draft 2020-12 documents — one for responses, one for request
bodies when the resource takes parameters — which the hub puts in the signed global
configuration. Nodes compile them once (``compile_schema``, cached by the schema's RFC 8785
hash) with jsonschema-rs and Qiao's own validators as format checkers.

Decisions (docs/exchange-protocol.md, "Validation"):

* A record may carry only the catalog's fields (``additionalProperties: false``): a field the
  catalog does not describe is data leaving without being described, granted or recorded.
  The envelope around the records (``records_at``) may carry other members (paging, totals).
* A required item must be present and not null; an optional one may be absent or null.
* Errors name the place (a JSON Pointer into the payload, RFC 6901) and the rule broken,
  never the value: payloads are often personal information.
"""

from __future__ import annotations

import hashlib
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import orjson
import rfc8785

from qiao.catalog import validators
from qiao.catalog.spec import CodeList, DataElement, ElementType, Format, Item, ResourceSpec

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# How many errors a refusal lists: enough to fix a batch, bounded so a broken backend's
# million-record answer does not become a million-line problem document.
MAX_ERRORS = 20

_TYPES: dict[ElementType, dict[str, str]] = {
    ElementType.STRING: {"type": "string"},
    ElementType.INTEGER: {"type": "integer"},
    ElementType.NUMBER: {"type": "number"},
    ElementType.BOOLEAN: {"type": "boolean"},
    # RFC 3339 §5.6 via the JSON Schema format vocabulary (draft 2020-12 §7.3.1).
    ElementType.DATE: {"type": "string", "format": "date"},
    ElementType.DATETIME: {"type": "string", "format": "date-time"},
    ElementType.TIME: {"type": "string", "format": "time"},
}


# --- derivation ------------------------------------------------------------------------------


def derive_schemas(
    resource: ResourceSpec,
    elements: Mapping[str, DataElement],
    code_lists: Mapping[str, CodeList],
) -> dict[str, Any]:
    """``{"response": schema, "request": schema or None}`` for ``resource``, and ``"event"``
    (the schema of one event: a record) when the resource is also an event stream.

    Deterministic: the same catalog entries give the same RFC 8785 bytes, so the hub can hash
    and sign them. Raises ``ValueError`` if an item binds an unknown data element or code list.
    """
    base = f"urn:qiao:schema:{resource.provider}:{resource.code}:{resource.version}"
    record = _object_schema(resource.items, elements, code_lists, f"{resource.name} 记录")
    response: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": f"{base}:response",
        "title": f"{resource.name} ({resource.code} v{resource.version})",
        "$defs": {"record": record},
    }
    # A record, or an array of records, at records_at. if/then/else rather than anyOf so that
    # errors point into the failing record instead of collapsing into "matches no branch".
    records = {
        "if": {"type": "array"},
        "then": {"items": {"$ref": "#/$defs/record"}},
        "else": {"$ref": "#/$defs/record"},
    }
    response.update(_wrap(records, resource.records_at))
    request: dict[str, Any] | None = None
    if resource.parameters:
        request = {
            "$schema": DIALECT,
            "$id": f"{base}:request",
            "title": f"{resource.name} 请求参数",
            **_object_schema(resource.parameters, elements, code_lists, None),
        }
    schemas: dict[str, Any] = {"response": response, "request": request}
    if resource.stream is not None:
        # One event is one record (qiao.events): the provider node checks each against it.
        schemas["event"] = {
            "$schema": DIALECT,
            "$id": f"{base}:event",
            **record,
            "title": f"{resource.name} 事件",
        }
    return schemas


def _wrap(records: dict[str, Any], pointer: str) -> dict[str, Any]:
    """The schema that finds ``records`` at ``pointer`` (RFC 6901 §3, §4 for ~0 and ~1)."""
    if not pointer:
        return records
    schema = records
    for token in reversed(pointer.split("/")[1:]):
        name = token.replace("~1", "/").replace("~0", "~")
        schema = {"type": "object", "properties": {name: schema}, "required": [name]}
    return schema


def _object_schema(
    items: Iterable[Item],
    elements: Mapping[str, DataElement],
    code_lists: Mapping[str, CodeList],
    title: str | None,
) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for item in items:
        element = elements.get(item.element)
        if element is None:
            raise ValueError(f"item {item.field!r} binds unknown data element {item.element!r}")
        value = _element_schema(element, code_lists)
        value["title"] = item.name
        if item.required:
            required.append(item.field)
        else:
            # Optional: absent or null (a backend's empty column), else as the element says.
            # The type list, not anyOf, so that errors still name the broken keyword; format,
            # length and pattern ignore a null (draft 2020-12 validation §6.3, §7.1).
            value["type"] = [value["type"], "null"]
            if "enum" in value:
                value["enum"] = [*value["enum"], None]
        properties[item.field] = value
    schema: dict[str, Any] = {"type": "object"}
    if title:
        schema["title"] = title
    schema["properties"] = properties
    schema["required"] = required
    schema["additionalProperties"] = False
    return schema


def _element_schema(element: DataElement, code_lists: Mapping[str, CodeList]) -> dict[str, Any]:
    schema: dict[str, Any] = dict(_TYPES[element.type])
    if element.min_length is not None:
        schema["minLength"] = element.min_length
    if element.max_length is not None:
        schema["maxLength"] = element.max_length
    if element.pattern is not None:
        schema["pattern"] = element.pattern
    if element.format is not None:
        schema["format"] = element.format.value
    if element.code_list is not None:
        codes = code_lists.get(element.code_list)
        if codes is None:
            raise ValueError(
                f"data element {element.identifier} names unknown code list {element.code_list!r}"
            )
        schema["enum"] = [_code_value(element.type, c.value) for c in codes.codes]
    schema["x-qiao-element"] = element.identifier
    return schema


def _code_value(kind: ElementType, value: str) -> str | int | float:
    # Code lists are text; a numeric data element's codes are compared as numbers.
    if kind is ElementType.INTEGER:
        return int(value)
    if kind is ElementType.NUMBER:
        return float(value)
    return value


def schema_hash(schema: Mapping[str, Any]) -> str:
    """SHA-256 of the schema's RFC 8785 (JCS) canonical form: its identity in caches."""
    return hashlib.sha256(rfc8785.dumps(dict(schema))).hexdigest()


# --- formats ---------------------------------------------------------------------------------

_DIVISION = re.compile(r"^[1-8]\d{5}$")


def _division_check() -> Callable[[str], bool]:
    # GB/T 2260 codes are checked against the shipped code table once the standards module
    # provides it; until then the structural rule (six digits, a province-level prefix).
    full = getattr(validators, "is_valid_division_code", None)
    if full is not None:
        return full  # type: ignore[no-any-return]
    return lambda value: bool(_DIVISION.match(value))


def format_checkers() -> dict[str, Callable[[str], bool]]:
    """The named formats of ``spec.Format``, as jsonschema-rs format callables."""
    return {
        Format.CITIZEN_ID.value: validators.is_valid_citizen_id,
        Format.USCC.value: _strict(validators.validate_uscc),
        Format.PLATE.value: validators.is_valid_plate,
        Format.MOBILE.value: _mobile,
        Format.DIVISION.value: _division_check(),
    }


_MOBILE = re.compile(r"1[3-9][0-9]{9}")


def _mobile(value: str) -> bool:
    # The common, normalized form without the general validator's clean-up (which the
    # benchmark showed to be most of a record's cost); anything else is not in the catalog's
    # form anyway.
    return _MOBILE.fullmatch(value) is not None


def _strict(check: Callable[[str], str]) -> Callable[[str], bool]:
    """Valid only as sent: the validators normalize (case, spaces, +86), but a payload that
    needs normalizing is not in the catalog's form."""

    def ok(value: str) -> bool:
        try:
            return check(value) == value
        except validators.InvalidCode:
            return False

    return ok


_RULE_OF: dict[str, Callable[[str], object]] = {
    Format.CITIZEN_ID.value: validators.validate_citizen_id,
    Format.USCC.value: validators.validate_uscc,
    Format.PLATE.value: validators.validate_plate,
    Format.MOBILE.value: validators.validate_mobile,
}
if hasattr(validators, "validate_division_code"):  # GB/T 2260, with the shipped code table
    _RULE_OF[Format.DIVISION.value] = validators.validate_division_code


def format_rule(name: str, value: object) -> str:
    """Which rule of the named format ``value`` breaks, e.g. ``uscc.check-character``."""
    check = _RULE_OF.get(name)
    if check is None or not isinstance(value, str):
        return name
    try:
        normalized = check(value)
    except validators.InvalidCode as exc:
        return exc.rule
    return f"{name}.normalized-form" if normalized != value else name


# --- compiled validators ---------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (JSON Pointer into the payload) and which rule."""

    pointer: str
    keyword: str  # the JSON Schema keyword: type, format, enum, required, ...
    rule: str = ""  # for formats, the validator's rule, e.g. "plate.province"

    def to_dict(self) -> dict[str, str]:
        out = {"pointer": self.pointer, "keyword": self.keyword}
        if self.rule:
            out["rule"] = self.rule
        return out


def _pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class PayloadValidator:
    """A compiled schema: ``errors(instance)`` lists at most ``limit`` violations."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = dict(schema)
        self.hash = schema_hash(self.schema)
        self._v = jsonschema_rs.Draft202012Validator(
            self.schema, formats=format_checkers(), validate_formats=True
        )

    def is_valid(self, instance: Any) -> bool:
        return bool(self._v.is_valid(instance))

    def errors(self, instance: Any, limit: int = MAX_ERRORS) -> list[Violation]:
        if self._v.is_valid(instance):  # the common case, and the cheapest check
            return []
        out: list[Violation] = []
        seen: set[Violation] = set()
        for error in self._v.iter_errors(instance):
            for v in _violations(error):
                if v not in seen:
                    seen.add(v)
                    out.append(v)
            if len(out) >= limit:
                return out[:limit]
        return out

    def check_json(self, body: bytes, limit: int = MAX_ERRORS) -> list[Violation]:
        """Violations of a JSON document; one at the root if it is not JSON at all."""
        try:
            instance = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [Violation("", "json", "not-json")]
        return self.errors(instance, limit)


def _violations(error: Any) -> list[Violation]:
    path = list(error.instance_path)
    keyword = str(error.schema_path[-1]) if error.schema_path else ""
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        # Point at the missing member, not at the object that lacks it.
        return [Violation(_pointer([*path, str(kind.property)]), "required")]
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
        return [
            Violation(_pointer([*path, str(name)]), "additionalProperties")
            for name in kind.unexpected
        ]
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Format):
        name = str(kind.format)
        return [Violation(_pointer(path), "format", format_rule(name, error.instance))]
    return [Violation(_pointer(path), keyword)]


_CACHE: OrderedDict[str, PayloadValidator] = OrderedDict()
_CACHE_SIZE = 4096
_LOCK = threading.Lock()


def compile_schema(schema: Mapping[str, Any]) -> PayloadValidator:
    """The compiled validator of ``schema``, shared by every configuration that carries the
    same schema (keyed by its RFC 8785 hash), so a new global configuration recompiles only
    what changed. Raises ``ValueError`` if the schema does not compile."""
    key = schema_hash(schema)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
            return cached
    try:
        compiled = PayloadValidator(schema)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        raise ValueError(f"schema {schema.get('$id', '')!r} does not compile: {exc}") from exc
    with _LOCK:
        _CACHE[key] = compiled
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return compiled


# --- bodies ----------------------------------------------------------------------------------


def is_json_media_type(content_type: str) -> bool:
    """application/json or any ``+json`` structured syntax suffix (RFC 6839 §3.1)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Undecodable(ValueError):
    pass


def decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip, deflate; RFC 9110 §8.4.1), decompressed
    to at most ``limit`` bytes: a small compressed answer must not become a memory bomb."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise Undecodable(f"content-coding {coding!r} cannot be checked")
    wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Undecodable(f"the {coding} body is corrupt") from exc
    if len(out) > limit or d.unconsumed_tail:
        raise Undecodable(f"the decoded body is over the {limit}-byte limit")
    # zlib stops at the end of the first gzip member; a client decompresses every member.
    # Whatever follows would reach the client unchecked, so it is refused.
    if not d.eof or d.unused_data:
        raise Undecodable(f"the {coding} body has data the check cannot see")
    return out
