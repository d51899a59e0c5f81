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


# --- The status banner on every admin page that matters ---------------------------------------------------------


def test_publishers_admin_templates_come_before_djangos():
    """The banner lives in ``publisher/templates/admin/base_site.html``: Django finds app templates in
    INSTALLED_APPS order, so ``publisher`` must come before ``publisher.apps.PublisherAdminConfig`` (the admin)."""
    from django.template.loader import get_template

    origin = get_template("admin/base_site.html").origin.name
    assert origin.endswith("publisher/templates/admin/base_site.html"), (
        f"Django's admin/base_site.html ({origin}) is found first: in settings.INSTALLED_APPS, put 'publisher' "
        "before 'publisher.apps.PublisherAdminConfig'"
    )


@pytest.fixture
def fresh_live_cache():
    """A fresh live-pointer cache for the banner."""
    from publisher import status

    status.forget_live_site()


BANNER = 'id="publisher-status"'


def test_the_banner_is_on_the_index_the_pages_and_the_builds(admin_client, fresh_live_cache, site_root):
    from publisher import builds
    from publisher.models import Build, Page

    page = Page.objects.create(slug="alpha", title="Alpha")
    builds.request_build("x")
    build = Build.objects.get()
    urls = [
        reverse("admin:index"),
        reverse("admin:publisher_page_changelist"),
        reverse("admin:publisher_page_add"),
        reverse("admin:publisher_page_change", args=[page.pk]),
        reverse("admin:publisher_build_changelist"),
        reverse("admin:publisher_build_change", args=[build.pk]),
    ]
    for url in urls:
        html = admin_client.get(url).content.decode()
        assert html.count(BANNER) == 1, url
        assert f'<a href="/admin/publisher/build/{build.pk}/change/">Build #{build.pk}</a>' in html, url
        assert 'data-url="/admin/publisher/status.json"' in html and "publisher/admin-status.js" in html, url
        assert 'id="site-name"' in html, "Django's header stays"


def test_no_banner_on_the_login_page_nor_for_staff_who_cannot_view_builds(
    client, django_user_model, fresh_live_cache, site_root
):
    from django.contrib.auth.models import Permission

    login = client.get(reverse("admin:login"))
    assert login.status_code == 200 and 'name="username"' in login.content.decode()
    assert BANNER not in login.content.decode() and "admin-status.js" not in login.content.decode()
    user = django_user_model.objects.create_user("editor", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_page", "change_page"]))
    assert client.post(reverse("admin:login"), {"username": "editor", "password": "pw"}).status_code == 302
    html = client.get(reverse("admin:publisher_page_changelist")).content.decode()
    assert "Select page to change" in html and BANNER not in html
    user.user_permissions.add(Permission.objects.get(codename="view_build"))
    assert BANNER in client.get(reverse("admin:publisher_page_changelist")).content.decode()


def test_a_broken_status_does_not_break_the_admin(admin_client, fresh_live_cache, monkeypatch, caplog):
    from publisher import status

    def broken():
        raise RuntimeError("database on fire")

    monkeypatch.setattr(status, "snapshot", broken)
    response = admin_client.get(reverse("admin:index"))
    assert response.status_code == 200 and BANNER not in response.content.decode()
    assert "The status banner could not be computed" in caplog.text
    assert admin_client.get("/admin/publisher/status.json").status_code == 503


def test_the_banners_script_and_style_are_static_files():
    from django.contrib.staticfiles import finders

    script = finders.find("publisher/admin-status.js")
    assert script and "/admin/" not in open(script).read(), "the endpoint's URL comes from the page"
    assert "visibilitychange" in open(script).read() and finders.find("publisher/admin-status.css")
