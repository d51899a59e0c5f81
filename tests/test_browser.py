"""The product in a real browser, as an editor uses it (issue #10): Debian's Chromium driven by Playwright against the
web process ``make run`` starts, with real local builds of a site large enough that a build takes a few seconds.

Screenshots of each step land in ``BROWSER_ARTIFACTS`` (or the test's temporary folder); a failure also saves the
page it was on.
"""

import time
import urllib.error
import urllib.request

import pytest
from django.utils import timezone

from publisher.models import ACTIVE_STATES, Build, BuildState, Page

from .browser import log_in, shot
from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.browser]

#: Enough pages that a build runs for well over ten seconds (one render process, heartbeat every second), so the
#: banner, which refreshes every few seconds, can be seen to move, and a running build can be cancelled from its page.
SITE_PAGES = 100_000


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def fill_site(count):
    now = timezone.now()
    body = "Lorem ipsum dolor sit amet. " * 40
    for start in range(0, count, 5000):
        Page.objects.bulk_create(
            Page.published_copy(slug=f"filler-{i:06d}", title=f"Filler {i}", body=body, published_at=now)
            for i in range(start, min(start + 5000, count))
        )


def active_build():
    return Build.objects.filter(state__in=ACTIVE_STATES).first()


def watch_progress(page, *, timeout):
    """Values of the banner's progress bar, read without reloading, until the active build disappears."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # One read in the page: the banner is replaced every few seconds and the bar goes when the build ends, so a
        # count then a separate read of the attribute could wait for a bar that is gone.
        bar = page.evaluate(
            "() => { const bar = document.querySelector('#publisher-active .publisher-progress');"
            " return bar ? {value: bar.getAttribute('value')} : null; }"
        )
        if bar is None:
            if seen:
                return seen
        elif bar["value"] is not None and (not seen or seen[-1] != int(bar["value"])):
            seen.append(int(bar["value"]))
        page.wait_for_timeout(200)
    raise AssertionError(f"the build did not finish within {timeout}s; progress seen: {seen}")


def page_status(page, url):
    page.goto(url)
    return page.locator("#page-status").get_attribute("class"), page.locator("#page-status-words").inner_text()


def test_an_editor_drafts_publishes_watches_and_cancels(web, editor, browser_page, tmp_path):
    fill_site(SITE_PAGES)
    page = browser_page
    log_in(page, web)

    # A draft: saved, and the site does not change (no build is even requested).
    page.goto(f"{web}/admin/publisher/page/add/")
    page.fill("#id_title", "Hello from a browser")
    page.fill("#id_slug", "hello-browser")
    page.fill("#id_body", "Written by Chromium.")
    page.click("#save-draft-button")
    page.wait_for_selector("#page-status")
    form_url = page.url
    shot(page, tmp_path, "1-draft-saved")
    assert "draft" in page.locator("#page-status").get_attribute("class")
    assert not Build.objects.exists()
    assert fetch(f"{web}/site/hello-browser/")[0] == 404

    # Publish: the banner shows the build and its progress moving, without a reload.
    page.goto(form_url)
    page.click("#publish-button")
    page.wait_for_selector("#publisher-active .publisher-progress", timeout=30_000)
    shot(page, tmp_path, "2-building")
    seen = watch_progress(page, timeout=240)
    print("progress seen in the banner:", seen)
    assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] > seen[0], seen
    first = Build.objects.get()
    assert first.state == BuildState.SUCCEEDED, (first.state, first.error)

    # "Is my change live?": the page says so, and the site shows it.
    wait_for(lambda: "live" in page_status(page, form_url)[0], timeout=30, interval=1, message="the page to be live")
    shot(page, tmp_path, "3-live")
    page.goto(f"{web}/site/hello-browser/")
    assert page.locator("h1").inner_text() == "Hello from a browser"

    # A second publish starts a build; a third, made while it runs, is queued behind it.
    page.goto(form_url)
    page.fill("#id_body", "Changed while a build runs.")
    page.click("#publish-button")
    running = wait_for(
        lambda: Build.objects.filter(state=BuildState.RUNNING).first(), timeout=60, message="build 2 to run"
    )
    page.goto(f"{web}/admin/publisher/page/add/")
    page.fill("#id_title", "Third page")
    page.fill("#id_slug", "third-page")
    page.click("#publish-button")
    queued = wait_for(lambda: Build.objects.filter(state=BuildState.QUEUED).first(), timeout=30, message="a queue")

    # Cancel the running build from its page (a confirmation first); the queued one proceeds and goes live.
    page.goto(f"{web}/admin/publisher/build/{running.pk}/change/")
    page.click("#publisher-cancel")
    page.wait_for_selector("#publisher-confirm-cancel")
    shot(page, tmp_path, "4-confirm-cancel")
    page.click("#publisher-confirm-cancel")
    page.wait_for_load_state()
    shot(page, tmp_path, "5-cancelled")
    assert Build.objects.get(pk=running.pk).state == BuildState.CANCELLED
    wait_for(
        lambda: Build.objects.get(pk=queued.pk).state == BuildState.SUCCEEDED,
        timeout=240,
        interval=0.5,
        message=f"the queued build #{queued.pk} to go live after the cancel",
    )
    page.goto(f"{web}/admin/publisher/build/{queued.pk}/change/")
    shot(page, tmp_path, "6-queued-build-live")
    page.goto(f"{web}/site/third-page/")
    assert page.locator("h1").inner_text() == "Third page"
    page.goto(f"{web}/site/hello-browser/")
    assert "Changed while a build runs." in page.content()
