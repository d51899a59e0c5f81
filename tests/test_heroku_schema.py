"""The Heroku dyno schema the launcher tests validate against ships with the repository (a fresh clone has it)."""

import pytest

from . import heroku_schema
from .conftest import PROJECT_ROOT


def test_the_schema_is_read_from_the_repository_by_default(monkeypatch):
    monkeypatch.delenv("HEROKU_DYNO_SCHEMA", raising=False)
    path = heroku_schema.schema_path()
    assert path == PROJECT_ROOT / "tests" / "data" / "heroku" / "dyno-schema.json"
    assert (path.parent / "SOURCE.md").is_file()
    schema = heroku_schema.load_schema()
    assert schema["definitions"]["dyno"]["links"][0]["title"] == "Create"


def test_a_schema_that_cannot_be_read_fails_the_test_instead_of_skipping_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HEROKU_DYNO_SCHEMA", str(tmp_path / "missing.json"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(BaseException) as raised:  # skip and fail are both BaseExceptions
        heroku_schema.load_schema()
    assert raised.type is pytest.fail.Exception, raised.type
    assert "missing.json" in str(raised.value)
