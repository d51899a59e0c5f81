"""A real browser for the tests marked ``browser``: Playwright driving Debian's Chromium (``/usr/bin/chromium``),
against the product's own web process (``runserver``, as ``make run`` starts it) on a free port, sharing the test
database. Playwright never downloads a browser here. On failure the page's screenshot and HTML are saved under
``BROWSER_ARTIFACTS`` (CI keeps them) or the test's temporary folder."""

import os
import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
#: Without the background-networking flags Chromium keeps reaching for Google's hosts on this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a-browser-test-password"


@pytest.fixture
def web(children, child_env, tmp_path, settings):
    """The product's web process on a free port (``LAUNCHER=local``, builds as real processes, ``/site/`` served)."""
    import urllib.request

    from .conftest import free_port, wait_for

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **child_env,
        "DEBUG": "1",
        "LAUNCHER": "local",
        "SITE_URL": f"{base}/site/",
        "SITE_SERVE": "1",
        "BUILD_HEARTBEAT_INTERVAL": "1",
        # One render process: a build long enough to watch whatever the machine's cores (the test is about the
        # editor's view, not speed).
        "BUILD_WORKERS": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    log = open(tmp_path / "web.log", "w")  # closed at teardown
    proc = children.manage("runserver", "--noreload", f"127.0.0.1:{port}", env=env, stdout=log, stderr=log)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"the web process exited: {(tmp_path / 'web.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/admin/login/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(up, timeout=60, interval=0.2, message="the web process to answer")
    yield base
    log.close()


@pytest.fixture
def editor(django_user_model, settings):
    """A superuser the browser logs in as (hashed as the web process, with the project's settings, checks it)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    return django_user_model.objects.create_superuser("editor", "editor@example.test", PASSWORD)


@pytest.fixture
def browser_page(request, tmp_path, monkeypatch):
    """A fresh Chromium page; screenshot and HTML saved when the test fails."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/run installs it when it can)")
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM reads are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            save_artifacts(page, request.node.name, tmp_path)
        context.close()
        browser.close()


def save_artifacts(page, name, tmp_path):
    folder = Path(os.environ.get("BROWSER_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "_", name)
    try:
        page.screenshot(path=str(folder / f"{stem}.png"), full_page=True)
        (folder / f"{stem}.html").write_text(page.content())
    except Exception as exc:  # the browser itself may be what broke
        (folder / f"{stem}.error.txt").write_text(repr(exc))
    print(f"browser artifacts of {name}: {folder}")


def shot(page, tmp_path, name):
    """A screenshot worth looking at by hand (kept under BROWSER_ARTIFACTS when it is set)."""
    folder = Path(os.environ.get("BROWSER_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    return folder / f"{name}.png"


def log_in(page, base, username="editor"):
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")
