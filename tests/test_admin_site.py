"""The admin's "View site" link leads to the live static site (``SITE_URL``), not to ``/`` (a 404)."""

import re

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def view_site_link(html):
    match = re.search(r'<a href="([^"]*)">View site</a>', html)
    assert match, "the admin shows a 'View site' link"
    return match.group(1)


def test_view_site_leads_to_site_url(admin_client, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_URL": "https://www.example.org/news/"}
    response = admin_client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert view_site_link(response.content.decode()) == "https://www.example.org/news/"


def test_view_site_follows_a_changed_setting_without_a_restart(admin_client, settings):
    for url in ("http://127.0.0.1:8001/site/", "https://cdn.example.net/"):
        settings.PUBLISHER = {**settings.PUBLISHER, "SITE_URL": url}
        html = admin_client.get(reverse("admin:publisher_page_changelist")).content.decode()
        assert view_site_link(html) == url
