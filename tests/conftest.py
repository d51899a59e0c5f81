import pytest


@pytest.fixture
def site_root(tmp_path, settings):
    """A fresh SITE_ROOT for one test."""
    root = tmp_path / "site"
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_ROOT": root}
    return root
