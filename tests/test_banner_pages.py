"""The status banner is on every admin page that matters (index, page list, page form, builds), not only in the JSON
endpoint: the publisher's ``admin/base_site.html`` must win over the admin's own (found by the browser test)."""

import pytest

from publisher.models import Build, Page

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/publisher/page/",
        "/admin/publisher/page/add/",
        "/admin/publisher/page/{page}/change/",
        "/admin/publisher/build/",
        "/admin/publisher/build/{build}/change/",
    ],
)
def test_the_banner_is_on_the_page(admin_client, url):
    page = Page.objects.create(title="A page", slug="a-page")
    build = Build.objects.create()
    html = admin_client.get(url.format(page=page.pk, build=build.pk)).content.decode()
    assert 'id="publisher-status"' in html and "publisher/admin-status.js" in html


def test_the_login_page_has_no_banner(client):
    html = client.get("/admin/login/").content.decode()
    assert "Log in" in html and 'id="publisher-status"' not in html
