"""Message shapes from YAML: what they accept, and the field named when they refuse."""

from __future__ import annotations

import pytest

from channels.config import Config
from channels.errors import ConfigError, InvalidData
from channels.shapes import DataCheck

ORDER = """
channels:
  - match: orders
    data:
      type: object
      fields:
        id: {type: integer, minimum: 1}
        side: {type: string, enum: [buy, sell]}
        price: {type: number, minimum: 0, maximum: 1000000}
        note: {type: string, max_length: 20, optional: true}
        code: {type: string, pattern: "[A-Z]{3}", optional: true}
        lines:
          type: array
          max_length: 2
          items:
            type: object
            fields:
              sku: {type: string, min_length: 1}
              qty: {type: integer, minimum: 1}
        paid: {type: boolean}
"""
CHECK = DataCheck(Config.parse(ORDER, env={}).channels[0].data)  # type: ignore[arg-type]  # the rule has a shape
GOOD = b'{"id":1,"side":"buy","price":9.5,"lines":[{"sku":"a","qty":2}],"paid":true}'


def test_a_matching_message_passes() -> None:
    CHECK.check("orders", GOOD)
    CHECK.check("orders", GOOD.replace(b'"paid"', b'"note":"hi","code":"EUR","paid"'))


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (GOOD.replace(b'"id":1', b'"id":0'), "data.id", "Expected `int` >= 1"),
        (GOOD.replace(b'"buy"', b'"hold"'), "data.side", "Invalid enum value 'hold'"),
        (GOOD.replace(b"9.5", b'"9.5"'), "data.price", "Expected `float`, got `str`"),
        (GOOD.replace(b'"qty":2', b'"qty":0'), "data.lines[0].qty", "Expected `int` >= 1"),
        (GOOD.replace(b',"paid":true', b""), "data", "missing required field `paid`"),
        (GOOD.replace(b'"paid"', b'"extra":1,"paid"'), "data", "unknown field `extra`"),
        (GOOD.replace(b'"paid"', b'"code":"eur","paid"'), "data.code", "Expected `str` matching"),
        (b"[1]", "data", "Expected `object`, got `array`"),
    ],
    ids=["bound", "enum", "type", "nested", "missing", "unknown", "pattern", "not-object"],
)
def test_a_mismatch_names_the_field(data: bytes, field: str, reason: str) -> None:
    with pytest.raises(InvalidData) as caught:
        CHECK.check("orders", data)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert caught.value.code == 208


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("{type: object}", "an object needs fields"),
        ("{type: array}", "an array needs items"),
        ("{type: boolean, enum: [a]}", "enum is for type: string or integer"),
        ("{type: string, pattern: '('}", "is not a regular expression"),
        ("{type: date}", "Invalid enum value 'date'"),
    ],
)
def test_a_bad_shape_is_a_config_error(shape: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.parse(f"channels: [{{match: a, data: {shape}}}]", env={})
    assert message in str(caught.value)
