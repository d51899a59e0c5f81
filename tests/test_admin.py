from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils.html import escape

from publisher import signals
from publisher.models import Build, Page

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:publisher_page_changelist")


@pytest.fixture
def sent():
    received = []

    def receiver(signal, page, by, **kwargs):
        received.append((signal, page.slug, by.username if by else None))

    for signal in signals.PAGE_SIGNALS:
        signal.connect(receiver, weak=False)
    yield received
    for signal in signals.PAGE_SIGNALS:
        signal.disconnect(receiver)


def editor(django_user_model, client, *, can_publish):
    user = django_user_model.objects.create_user("editor", password="pw", is_staff=True)
    codenames = ["view_page", "change_page", "add_page", "delete_page"] + (["publish_page"] if can_publish else [])
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="publisher", codename__in=codenames))
    client.force_login(user)
    return client


def page(slug, *, live=False, title=None):
    p = Page(slug=slug, title=title or slug.title(), body="body")
    p.publish() if live else p.save()
    return p


def test_changelist_shows_status_search_and_filters(admin_client):
    page("alpha", live=True, title="Alpha page")
    page("beta", title="Beta page")
    response = admin_client.get(CHANGELIST)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Alpha page" in html and "Beta page" in html
    assert "http://127.0.0.1:8000/site/alpha/" in html  # the live link for the live page only
    assert "http://127.0.0.1:8000/site/beta/" not in html
    searched = admin_client.get(CHANGELIST, {"q": "beta"}).content.decode()
    assert "Beta page" in searched and "Alpha page" not in searched
    filtered = admin_client.get(CHANGELIST, {"is_published__exact": "1"}).content.decode()
    assert "Alpha page" in filtered and "Beta page" not in filtered


def test_bulk_publish_and_unpublish(admin_client, sent):
    a, b = page("alpha"), page("beta")
    response = admin_client.post(
        CHANGELIST, {"action": "publish_selected", "_selected_action": [a.pk, b.pk]}, follow=True
    )
    assert "2 pages published" in response.content.decode()
    assert set(Page.objects.values_list("is_published", flat=True)) == {True}
    assert sorted(s for _, s, _ in sent) == ["alpha", "beta"]
    assert {signal for signal, _, _ in sent} == {signals.page_published}
    sent.clear()
    admin_client.post(CHANGELIST, {"action": "unpublish_selected", "_selected_action": [a.pk]})
    assert sent == [(signals.page_unpublished, "alpha", "admin")]
    response = admin_client.post(CHANGELIST, {"action": "unpublish_selected", "_selected_action": [a.pk]}, follow=True)
    assert "Nothing to do" in response.content.decode()


def test_publish_actions_need_the_permission(client, django_user_model):
    c = editor(django_user_model, client, can_publish=False)
    p = page("alpha")
    html = c.get(CHANGELIST).content.decode()
    assert "publish_selected" not in html
    c.post(CHANGELIST, {"action": "publish_selected", "_selected_action": [p.pk]})
    assert not Page.objects.get(pk=p.pk).is_published


def test_editor_with_permission_can_publish(client, django_user_model):
    c = editor(django_user_model, client, can_publish=True)
    p = page("alpha")
    assert "publish_selected" in c.get(CHANGELIST).content.decode()
    c.post(CHANGELIST, {"action": "publish_selected", "_selected_action": [p.pk]})
    assert Page.objects.get(pk=p.pk).is_published


def form(slug="alpha", title="Alpha", body="text", **extra):
    return {"title": title, "slug": slug, "body": body, **extra}


def test_save_and_publish_button_adds_a_live_page(admin_client, sent):
    html = admin_client.get(reverse("admin:publisher_page_add")).content.decode()
    assert 'name="_saveandpublish"' in html
    admin_client.post(reverse("admin:publisher_page_add"), form(_saveandpublish="1"))
    assert Page.objects.get(slug="alpha").is_published
    assert sent == [(signals.page_published, "alpha", "admin")]


def test_save_and_publish_on_a_live_page_sends_one_change(admin_client, sent):
    p = page("alpha", live=True)
    sent.clear()
    url = reverse("admin:publisher_page_change", args=[p.pk])
    admin_client.post(url, form(title="New", _saveandpublish="1"))
    assert sent == [(signals.page_changed, "alpha", "admin")]


def test_plain_save_of_a_draft_does_not_publish(admin_client, sent):
    admin_client.post(reverse("admin:publisher_page_add"), form(_save="1"))
    assert not Page.objects.get(slug="alpha").is_published
    assert sent == []


def test_save_and_publish_needs_the_permission(client, django_user_model, sent):
    c = editor(django_user_model, client, can_publish=False)
    assert 'name="_saveandpublish"' not in c.get(reverse("admin:publisher_page_add")).content.decode()
    response = c.post(reverse("admin:publisher_page_add"), form(_saveandpublish="1"))
    assert response.status_code == 403
    assert not Page.objects.filter(slug="alpha").exists()
    assert sent == []


def test_live_page_form_has_the_hint_and_the_site_link(admin_client):
    live, draft = page("alpha", live=True), page("beta")
    live_html = admin_client.get(reverse("admin:publisher_page_change", args=[live.pk])).content.decode()
    assert 'id="live-hint"' in live_html and "Saving puts your changes on the site" in live_html
    assert "http://127.0.0.1:8000/site/alpha/" in live_html
    draft_html = admin_client.get(reverse("admin:publisher_page_change", args=[draft.pk])).content.decode()
    assert 'id="live-hint"' not in draft_html and "/site/beta/" not in draft_html


def test_saving_a_live_page_sends_page_changed_with_the_user(admin_client, sent):
    p = page("alpha", live=True)
    sent.clear()
    admin_client.post(reverse("admin:publisher_page_change", args=[p.pk]), form(body="changed", _save="1"))
    assert sent == [(signals.page_changed, "alpha", "admin")]


def test_bad_slug_is_a_form_error(admin_client):
    response = admin_client.post(reverse("admin:publisher_page_add"), form(slug="sitemap"))
    assert response.status_code == 200 and "the site build writes" in response.content.decode()
    assert not Page.objects.exists()


def test_bulk_delete_of_live_pages_sends_page_deleted(admin_client, sent):
    a, b = page("alpha", live=True), page("beta")
    sent.clear()
    admin_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [a.pk, b.pk], "post": "yes"})
    assert not Page.objects.exists()
    assert sent == [(signals.page_deleted, "alpha", "admin")]


@pytest.mark.django_db(transaction=True)
def test_the_editor_sees_what_the_build_system_did(admin_client):
    response = admin_client.post(reverse("admin:publisher_page_add"), form(_saveandpublish="1"), follow=True)
    html = response.content.decode()
    build = Build.objects.get()
    assert f"Build #{build.pk} has started; your change is live when it finishes." in html
    assert "recorded launch" not in html, "where it runs is for the build's page and the log"
    p = Page.objects.get(slug="alpha")
    response = admin_client.post(
        reverse("admin:publisher_page_change", args=[p.pk]), form(body="new", _save="1"), follow=True
    )
    assert f"Your change will be in build #{build.pk}, which is starting." in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_failed_launch_is_a_warning_and_the_page_is_saved(admin_client):
    from publisher.launchers import LaunchError, recording

    recording.fail_next(LaunchError("Heroku rejected the API key (401)", status=401, needs_operator=True))
    response = admin_client.post(reverse("admin:publisher_page_add"), form(_saveandpublish="1"), follow=True)
    html = response.content.decode()
    assert response.status_code == 200 and "could not start: an administrator has been told" in html
    assert "retried" in html and Page.objects.get(slug="alpha").is_published
    assert "rejected the API key" not in html, "the platform's error is for operators"


# --- A body over the limit is a form error, not a bare 400, and the editor's text survives ---------------------


def post_as_a_browser(client, url, data):
    """The page form as a browser sends it: URL-encoded (no file fields), non-ASCII percent-encoded."""
    return client.post(url, urlencode(data), content_type="application/x-www-form-urlencoded")


def test_a_body_over_the_limit_is_shown_back_with_the_message(admin_client, sent):
    body = ("Grüße aus Köln — ½ € ✓\n" * 60_000)[:1_199_999] + "."  # 1.2 million characters, 3.4 MiB as sent
    assert len(urlencode({"body": body})) > 2.5 * 2**20  # Django's default limit, which answered a bare 400
    response = post_as_a_browser(admin_client, reverse("admin:publisher_page_add"), form(body=body, _save="1"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "The body is 1,200,000 characters; the limit is 1,000,000." in html
    assert escape(body) in html  # the form shows the text again: nothing the editor wrote is lost
    assert not Page.objects.exists() and sent == []


def test_a_change_over_the_limit_keeps_the_stored_page(admin_client):
    p = page("alpha", live=True)
    url = reverse("admin:publisher_page_change", args=[p.pk])
    response = post_as_a_browser(admin_client, url, form(body="y" * 1_000_001, _save="1"))
    assert response.status_code == 200
    assert "The body is 1,000,001 characters; the limit is 1,000,000." in response.content.decode()
    assert Page.objects.get(pk=p.pk).body == "body"


def test_a_body_at_the_limit_saves_even_in_four_byte_characters(admin_client):
    """The worst case a browser sends for a body at the limit: 12 bytes a character once percent-encoded."""
    body = "😀" * 1_000_000
    response = post_as_a_browser(admin_client, reverse("admin:publisher_page_add"), form(body=body, _save="1"))
    assert response.status_code == 302
    assert Page.objects.get(slug="alpha").body == body


def test_the_body_textarea_carries_the_limit(admin_client):
    html = admin_client.get(reverse("admin:publisher_page_add")).content.decode()
    assert 'maxlength="1000000"' in html
