"""The product in a real browser, as an editor uses it (issue #10): Debian's Chromium driven by Playwright against the
web process ``make run`` starts, with real local builds."""

import urllib.error
import urllib.request

import pytest

from publisher.models import Build, BuildState, Page

from .browser import log_in, shot
from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.browser]


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_an_editor_publishes_a_page_and_sees_it_live(web, editor, browser_page, tmp_path):
    page = browser_page
    log_in(page, web)
    page.goto(f"{web}/admin/publisher/page/add/")
    page.fill("#id_title", "Hello from a browser")
    page.fill("#id_slug", "hello-browser")
    page.fill("#id_body", "Written by Chromium.")
    page.click("input[name=_saveandpublish]")
    wait_for(
        lambda: Build.objects.filter(state=BuildState.SUCCEEDED).exists(), timeout=60, message="the build to go live"
    )
    status, html = fetch(f"{web}/site/hello-browser/")
    assert status == 200 and "Hello from a browser" in html
    page.goto(f"{web}/site/hello-browser/")
    assert page.locator("h1").inner_text() == "Hello from a browser"
    shot(page, tmp_path, "live-page")
    assert Page.objects.get(slug="hello-browser").is_published
