"""Message shapes: a rule's ``data`` shape from YAML, turned into a msgspec type.

The type is built once, when the rules are loaded; checking a message is then one
msgspec decode of its already-encoded ``data``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from channels.errors import InvalidData

if TYPE_CHECKING:
    from channels.config import Shape

__all__ = ("DataCheck", "build_type")

_names = itertools.count()


def build_type(shape: Shape) -> Any:
    """The Python type (for msgspec) that accepts exactly the values *shape* describes."""
    kind = shape.type
    if kind == "object":
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for name, field in (shape.fields or {}).items():
            field_type = build_type(field)
            if field.optional:
                fields.append((name, field_type | None, None))
            else:
                fields.append((name, field_type))
        return msgspec.defstruct(
            f"Data{next(_names)}", fields, forbid_unknown_fields=True, kw_only=True
        )
    if kind == "array":
        item = build_type(shape.items) if shape.items is not None else Any
        return _bounded(list[item], min_length=shape.min_length, max_length=shape.max_length)  # type: ignore[valid-type]  # built at run time
    if shape.enum is not None:
        return Literal[tuple(shape.enum)]
    if kind == "string":
        return _bounded(
            str, min_length=shape.min_length, max_length=shape.max_length, pattern=shape.pattern
        )
    if kind in {"integer", "number"}:
        return _bounded(int if kind == "integer" else float, ge=shape.minimum, le=shape.maximum)
    return bool if kind == "boolean" else None


def _bounded(base: Any, **bounds: Any) -> Any:
    given = {key: value for key, value in bounds.items() if value is not None}
    return Annotated[base, msgspec.Meta(**given)] if given else base


class DataCheck:
    """Check a message's encoded ``data`` against a rule's shape."""

    def __init__(self, shape: Shape) -> None:
        self._decoder = msgspec.json.Decoder(build_type(shape))

    def check(self, channel: str, data: msgspec.Raw | bytes) -> None:
        """Raise `InvalidData`, naming the field, if *data* does not have the shape."""
        try:
            self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).rpartition(" - at `$")
            if not message:
                message, where = str(exc), ""
            raise InvalidData(channel, f"data{where.rstrip('`')}", message) from None
