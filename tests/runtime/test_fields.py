"""The field schema that context conditioning rests on: record formatting and prompts."""

import json

import pytest

from tinygen import ModelFormatError, TinygenError
from tinygen.fields import FieldSchema

SCHEMA = FieldSchema(("title", "keywords", "body"))


def test_records_are_written_in_schema_order_with_field_tokens():
    record = {"body": "It rained.", "title": "Rain", "keywords": ["wet", "grey"], "extra": 1}
    assert SCHEMA.format(record) == "<|title|>Rain<|keywords|>wet, grey<|body|>It rained."
    assert SCHEMA.format({"title": "Rain", "keywords": [], "body": ""}) == "<|title|>Rain"


def test_empty_list_items_are_no_values():
    """[""] wrote a bare <|keywords|>, and --context keywords=a, (a list "a", "") wrote "a, ":
    shapes no record had."""
    assert SCHEMA.format({"title": "Rain", "keywords": ["", ""], "body": "x"}) == "<|title|>Rain<|body|>x"
    assert SCHEMA.format({"keywords": [""], "body": "x"}) == "<|body|>x"
    assert SCHEMA.prompt({"title": "Rain", "keywords": ["wet", ""]}) == \
        ("<|title|>Rain<|keywords|>wet<|body|>", "body")


def test_prompt_writes_the_context_then_the_target_token():
    assert SCHEMA.prompt({"title": "Rain", "keywords": ["wet"]}) == \
        ("<|title|>Rain<|keywords|>wet<|body|>", "body")
    assert SCHEMA.prompt({"title": "Rain"}, target="keywords") == ("<|title|>Rain<|keywords|>", "keywords")
    with pytest.raises(TinygenError, match="both given and to be generated"):
        SCHEMA.prompt({"title": "Rain"}, target="title")
    with pytest.raises(TinygenError, match="context fills every field"):
        SCHEMA.prompt({"title": "a", "keywords": "b", "body": "c"})
    with pytest.raises(TinygenError, match="must be a string or a list"):
        SCHEMA.prompt({"title": 3})


def test_parse_save_and_load(tmp_path):
    assert FieldSchema.parse("text") is None
    schema = FieldSchema.parse("title, body")
    assert schema.names == ("title", "body")
    assert FieldSchema.load(schema.save(tmp_path)) == schema
    (tmp_path / "fields.json").write_text(json.dumps({"names": ["only"]}))
    with pytest.raises(ModelFormatError, match="two or more distinct field names"):
        FieldSchema.load(tmp_path / "fields.json")
    with pytest.raises(TinygenError, match="two or more distinct"):
        FieldSchema(("a", "a"))
