"""Heroku's official dyno schema, for checking every request body the Heroku launcher sends.

The schema ships with the tests: ``tests/data/heroku/dyno-schema.json`` is the ``dyno`` definition of
heroku/platform-api ``schema.json``, copied verbatim (where from and when: ``SOURCE.md`` next to it).
``$HEROKU_DYNO_SCHEMA`` may point at another copy, e.g. a newer one. A schema that cannot be read fails the test
that needs it: it is never skipped.
"""

import functools
import json
import os
from pathlib import Path

import pytest
from jsonschema import Draft4Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4

SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "heroku" / "dyno-schema.json"
SCHEMA_URI = "urn:heroku:platform-api:dyno-schema"
CREATE_LINK = "#/definitions/dyno/links/0"
MAX_TIME_TO_LIVE = 86400


def schema_path():
    configured = os.environ.get("HEROKU_DYNO_SCHEMA", "").strip()
    return Path(configured) if configured else SCHEMA_PATH


def load_schema():
    """The schema document; fails the test when it cannot be read."""
    path = schema_path()
    try:
        return _read(str(path))
    except (OSError, ValueError) as exc:
        pytest.fail(
            f"Heroku dyno schema not readable at {path} ({type(exc).__name__}: {exc}); the repository ships it "
            f"at {SCHEMA_PATH}, and HEROKU_DYNO_SCHEMA (when set) must name a readable copy",
            pytrace=False,
        )


@functools.cache
def _read(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def create_validator():
    """A Draft 4 validator for the request body of the dyno ``Create`` link (``POST /apps/{app}/dynos``)."""
    schema = load_schema()
    link = schema["definitions"]["dyno"]["links"][0]
    assert (link["title"], link["method"]) == ("Create", "POST"), "the schema's first dyno link is no longer Create"
    registry = Registry().with_resource(SCHEMA_URI, DRAFT4.create_resource(schema))
    return Draft4Validator({"$ref": f"{SCHEMA_URI}{CREATE_LINK}/schema"}, registry=registry)


def assert_valid_dyno_create(body, *, keys):
    """``body`` is valid for the Create link, has exactly ``keys``, and asks for at most 24 hours.

    ``strictProperties`` is not a JSON Schema keyword, so validators accept unknown keys and any ``time_to_live``:
    both are checked here by hand.
    """
    errors = sorted(create_validator().iter_errors(body), key=lambda error: list(error.path))
    assert not errors, "; ".join(f"{list(error.path)}: {error.message}" for error in errors)
    assert set(body) == set(keys), f"body keys {sorted(body)} != {sorted(keys)}"
    known = load_schema()["definitions"]["dyno"]["links"][0]["schema"]["properties"]
    assert set(body) <= set(known), f"keys the Create link does not define: {sorted(set(body) - set(known))}"
    if "time_to_live" in body:
        assert 1 <= body["time_to_live"] <= MAX_TIME_TO_LIVE
    assert None not in body.values(), "a null value (the API rejects size: null)"
