"""The page admin: drafts, Publish / Unpublish behind ``publisher.publish_page``, the live state and the page
status, with ``admin_client`` and staff users with and without the permission."""

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from publisher import signals
from publisher.models import Build, BuildRequest, BuildState, Page

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:publisher_page_changelist")
ADD = reverse("admin:publisher_page_add")


def change_url(p):
    return reverse("admin:publisher_page_change", args=[p.pk])


def delete_url(p):
    return reverse("admin:publisher_page_delete", args=[p.pk])


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


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """``with committed():`` around one request: its build request is dispatched as on a real commit, so each user
    action is counted on its own (in the test's one transaction they would join)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def editor(django_user_model, client, *, can_publish):
    user = django_user_model.objects.create_user("editor", password="pw", is_staff=True)
    codenames = ["view_page", "change_page", "add_page", "delete_page"] + (["publish_page"] if can_publish else [])
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="publisher", codename__in=codenames))
    client.force_login(user)
    return client


def page(slug, *, live=False, title=None, body="body"):
    p = Page(slug=slug, title=title or slug.title(), body=body)
    p.publish() if live else p.save()
    return p


def form(slug="alpha", title="Alpha", body="text", **extra):
    return {"title": title, "slug": slug, "body": body, **extra}


def stored(p):
    return Page.objects.get(pk=p.pk)


# --- The list: live state column and filter, the last publish's status, search --------------------------------


def test_changelist_shows_live_state_status_search_and_filters(admin_client):
    page("alpha", live=True, title="Alpha page")
    page("beta", title="Beta page")
    changed = page("gamma", live=True, title="Gamma page")
    changed.body = "an edit"
    changed.save()
    response = admin_client.get(CHANGELIST)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Alpha page" in html and "Beta page" in html
    states = ("live", "draft", "live, with unpublished changes")
    cells = [f'<td class="field-live_state">{state}</td>' for state in states]
    assert [html.count(cell) for cell in cells] == [1, 1, 1]
    assert html.count("waiting for the next build") == 2 and "not published yet" in html
    assert "http://127.0.0.1:8000/site/alpha/" in html  # the live link for live pages only
    assert "http://127.0.0.1:8000/site/beta/" not in html
    searched = admin_client.get(CHANGELIST, {"q": "beta"}).content.decode()
    assert "Beta page" in searched and "Alpha page" not in searched

    def listed(state):
        html = admin_client.get(CHANGELIST, {"live": state}).content.decode()
        return [title for title in ("Alpha page", "Beta page", "Gamma page") if title in html]

    assert listed("live") == ["Alpha page"]
    assert listed("changed") == ["Gamma page"]
    assert listed("draft") == ["Beta page"]


def test_the_list_words_each_pages_last_publish(admin_client, clock):
    a = page("alpha", live=True)
    clock.advance(60)
    running = Build.objects.create(state=BuildState.RUNNING, started_at=clock.now, pages_done=1, pages_total=4)
    clock.advance(60)
    page("beta", live=True)
    queued = Build.objects.create(state=BuildState.QUEUED)
    html = admin_client.get(CHANGELIST).content.decode()
    assert f"building in #{running.pk} (25 %)" in html
    assert f"waiting for build #{queued.pk}" in html
    assert 'class="page-status page-status-building"' in html and a.pk


def test_the_list_with_statuses_takes_the_same_few_queries_for_many_pages(
    admin_client, clock, django_assert_max_num_queries
):
    """Pages live, waiting, failed and drafts: the list's queries do not grow with the number of pages."""

    def make(count, prefix):
        for i in range(count):
            page(f"{prefix}{i}", live=bool(i % 2), body="x" * 10_000)
            clock.advance(5)
            if i == count // 2:
                Build.objects.create(
                    state=BuildState.SUCCEEDED,
                    started_at=clock.now,
                    finished_at=clock.now,
                    release=f"r-{prefix}",
                    published={"went_live": True},
                )
                clock.advance(5)
        Build.objects.filter(state__in=(BuildState.FAILED, BuildState.QUEUED)).delete()
        Build.objects.create(state=BuildState.FAILED, started_at=clock.now, finished_at=clock.now)
        Build.objects.create(state=BuildState.QUEUED, next_attempt_at=timezone.now() + timedelta(minutes=5))
        clock.advance(5)

    make(4, "few")
    admin_client.get(CHANGELIST)  # the session and content types: cached from here on
    with django_assert_max_num_queries(12) as few:
        assert "live since" in admin_client.get(CHANGELIST).content.decode()
    make(80, "many")
    with django_assert_max_num_queries(len(few.captured_queries)) as many:
        html = admin_client.get(CHANGELIST).content.decode()
    assert "live since" in html and "will be retried at" in html and "not published yet" in html
    listed = next(q["sql"] for q in many.captured_queries if "ORDER BY" in q["sql"] and "publisher_page" in q["sql"])
    columns = listed.split(" FROM ")[0].split("CASE")[0]  # the columns, before the live state's annotation
    assert '"publisher_page"."title"' in columns and "body" not in columns, "bodies are not loaded for the list"


# --- The form: Save draft, Publish / Publish changes, Unpublish -----------------------------------------------


def buttons(html):
    return [
        label
        for label, name in (
            ("Save draft", 'name="_continue"'),
            ("Publish", 'value="Publish" name="_saveandpublish"'),
            ("Publish changes", 'value="Publish changes" name="_saveandpublish"'),
            ("Unpublish", 'name="_unpublish"'),
            ("Delete", 'class="deletelink"'),
        )
        if name in html
    ]


def test_the_buttons_with_the_publish_permission(admin_client):
    live, drafted = page("alpha", live=True), page("beta")
    assert buttons(admin_client.get(ADD).content.decode()) == ["Save draft", "Publish"]
    assert buttons(admin_client.get(change_url(drafted)).content.decode()) == ["Save draft", "Publish", "Delete"]
    html = admin_client.get(change_url(live)).content.decode()
    assert buttons(html) == ["Save draft", "Publish changes", "Unpublish", "Delete"]
    assert html.index('name="_continue"') < html.index('name="_saveandpublish"'), "Enter in a field saves a draft"


def test_the_buttons_without_the_publish_permission(client, django_user_model):
    c = editor(django_user_model, client, can_publish=False)
    live, drafted = page("alpha", live=True), page("beta")
    assert buttons(c.get(ADD).content.decode()) == ["Save draft"]
    assert buttons(c.get(change_url(drafted)).content.decode()) == ["Save draft", "Delete"]
    html = c.get(change_url(live)).content.decode()
    assert buttons(html) == ["Save draft"], "no delete either: deleting a live page takes it off the site"
    assert "an editor who may publish publishes them" in html


def test_publish_adds_a_live_page_and_stays_on_its_form(admin_client, sent):
    response = admin_client.post(ADD, form(_saveandpublish="1"))
    p = Page.objects.get(slug="alpha")
    assert response.status_code == 302 and response["Location"] == change_url(p)
    assert p.live_title == "Alpha" and p.is_published
    assert sent == [(signals.page_published, "alpha", "admin")]
    html = admin_client.get(response["Location"]).content.decode()
    assert "Published “Alpha”." in html and 'id="page-status"' in html and "waiting for" in html


def test_save_draft_of_a_live_page_changes_nothing_live(admin_client, sent, committed):
    p = page("alpha", live=True, title="Alpha")
    BuildRequest.objects.all().delete()
    sent.clear()
    with committed():
        response = admin_client.post(change_url(p), form(title="New title", body="draft", _continue="1"), follow=True)
    html = response.content.decode()
    assert sent == [] and not BuildRequest.objects.exists()
    assert (stored(p).title, stored(p).live_title, stored(p).live_body) == ("New title", "Alpha", "body")
    assert "Saved the draft of “New title”. The site shows the live version until you publish." in html
    assert "Live, with unpublished changes." in html


def test_publish_changes_sends_one_page_changed_and_one_request(admin_client, sent, committed):
    p = page("alpha", live=True)
    BuildRequest.objects.all().delete()
    sent.clear()
    with committed():
        admin_client.post(change_url(p), form(title="New", _saveandpublish="1"))
    assert sent == [(signals.page_changed, "alpha", "admin")]
    assert list(BuildRequest.objects.values_list("reason", flat=True)) == ["published changes to “New”"]
    assert (stored(p).live_title, stored(p).live_body) == ("New", "text")


def test_publish_of_an_unchanged_live_page_says_there_is_nothing_to_do(admin_client, sent):
    p = page("alpha", live=True, title="Alpha", body="text")
    sent.clear()
    response = admin_client.post(change_url(p), form(_saveandpublish="1"), follow=True)
    assert sent == [] and "Nothing to publish: the live version of “Alpha” is this draft already." in (
        response.content.decode()
    )


def test_unpublish_from_the_form_keeps_the_draft(admin_client, sent, committed):
    p = page("alpha", live=True)
    BuildRequest.objects.all().delete()
    sent.clear()
    with committed():
        response = admin_client.post(change_url(p), form(body="kept draft", _unpublish="1"))
    assert sent == [(signals.page_unpublished, "alpha", "admin")]
    assert not stored(p).is_published and stored(p).live_slug is None and stored(p).body == "kept draft"
    assert response["Location"] == change_url(p)
    html = admin_client.get(response["Location"]).content.decode()
    assert "Unpublished “Alpha”; its draft is kept." in html and "taken down; off the site once" in html
    assert buttons(html) == ["Save draft", "Publish", "Delete"]


def test_plain_save_of_a_draft_does_not_publish(admin_client, sent):
    admin_client.post(ADD, form(_save="1"))
    assert not Page.objects.get(slug="alpha").is_published
    assert sent == []


@pytest.mark.parametrize("button", ["_saveandpublish", "_unpublish"])
def test_publish_and_unpublish_posts_need_the_permission(client, django_user_model, sent, button):
    c = editor(django_user_model, client, can_publish=False)
    live = page("alpha", live=True)
    sent.clear()
    assert c.post(ADD, form(slug="beta", **{button: "1"})).status_code == 403
    assert c.post(change_url(live), form(title="Changed", **{button: "1"})).status_code == 403
    assert not Page.objects.filter(slug="beta").exists()
    assert (stored(live).title, stored(live).is_published) == ("Alpha", True), "nothing was saved either"
    assert sent == []


def test_an_editor_without_the_permission_saves_drafts_of_live_pages(client, django_user_model, sent):
    c = editor(django_user_model, client, can_publish=False)
    live = page("alpha", live=True)
    sent.clear()
    response = c.post(change_url(live), form(body="suggested text", _continue="1"), follow=True)
    assert response.status_code == 200 and sent == []
    assert (stored(live).body, stored(live).live_body) == ("suggested text", "body")
    assert "The site shows the live version until an editor publishes." in response.content.decode()


def test_the_form_shows_the_changes_from_the_live_version_escaped(admin_client):
    p = page("alpha", live=True, title="Alpha", body="line one\nline two")
    p.title, p.body = "Alpha <b>bold</b>", "line one\nline 2 <script>alert(1)</script>"
    p.save()
    html = admin_client.get(change_url(p)).content.decode()
    assert '<pre class="page-diff">' in html
    assert '<span class="diff-del">-line two</span>' in html
    assert '<span class="diff-add">+line 2 &lt;script&gt;alert(1)&lt;/script&gt;</span>' in html
    assert '<span class="diff-add">+Alpha &lt;b&gt;bold&lt;/b&gt;</span>' in html
    assert "<script>alert(1)</script>" not in html
    assert "None: the draft is what is live." in admin_client.get(change_url(page("beta", live=True))).content.decode()


def test_live_page_form_has_the_status_the_hint_and_the_site_link(admin_client):
    live, drafted = page("alpha", live=True), page("beta")
    live_html = admin_client.get(change_url(live)).content.decode()
    assert 'id="live-hint"' in live_html and "Saving keeps your changes as a draft" in live_html
    assert "<strong>Live.</strong> Last publish:" in live_html
    assert "Live version changed:" in live_html and "Published at" not in live_html
    assert "http://127.0.0.1:8000/site/alpha/" in live_html
    draft_html = admin_client.get(change_url(drafted)).content.decode()
    assert 'id="live-hint"' not in draft_html and "/site/beta/" not in draft_html
    assert "<strong>Draft.</strong> Last publish: <span" in draft_html and "not published yet" in draft_html


def test_the_site_link_is_the_live_address_while_the_draft_moves(admin_client):
    p = page("alpha", live=True)
    p.slug = "alpha-moved"
    p.save()
    html = admin_client.get(change_url(p)).content.decode()
    assert "http://127.0.0.1:8000/site/alpha/" in html and "/site/alpha-moved/" not in html


def test_bad_slug_is_a_form_error(admin_client):
    response = admin_client.post(ADD, form(slug="sitemap"))
    assert response.status_code == 200 and "the site build writes" in response.content.decode()
    assert not Page.objects.exists()


def test_publishing_onto_an_address_another_page_is_live_at_is_a_form_error(admin_client, sent):
    about = page("about", live=True, title="About")
    about.slug = "about-us"
    about.save()
    sent.clear()
    response = admin_client.post(ADD, form(slug="about", title="Team", _saveandpublish="1"))
    assert response.status_code == 200
    assert "“About” is live at /about/." in response.content.decode()
    assert not Page.objects.filter(title="Team").exists() and sent == []
    response = admin_client.post(ADD, form(slug="about", title="Team", _continue="1"))
    assert response.status_code == 302, "as a draft the slug is free"


# --- Bulk actions ----------------------------------------------------------------------------------------------


def test_bulk_publish_and_unpublish_make_one_request_each(admin_client, sent, committed):
    a, b = page("alpha"), page("beta")
    with committed():
        response = admin_client.post(
            CHANGELIST, {"action": "publish_selected", "_selected_action": [a.pk, b.pk]}, follow=True
        )
    assert "2 pages published" in response.content.decode()
    assert set(Page.objects.values_list("is_published", flat=True)) == {True}
    assert sorted(s for _, s, _ in sent) == ["alpha", "beta"]
    assert {signal for signal, _, _ in sent} == {signals.page_published}
    assert BuildRequest.objects.count() == 1
    sent.clear()
    with committed():
        admin_client.post(CHANGELIST, {"action": "unpublish_selected", "_selected_action": [a.pk]})
    assert sent == [(signals.page_unpublished, "alpha", "admin")] and BuildRequest.objects.count() == 2
    response = admin_client.post(CHANGELIST, {"action": "unpublish_selected", "_selected_action": [a.pk]}, follow=True)
    assert "Nothing to do" in response.content.decode()


def test_bulk_publish_names_the_pages_it_refused(admin_client):
    about = page("about", live=True, title="About")
    about.slug = "about-us"
    about.save()
    team, other = page("about-team", title="Team"), page("other", title="Other")
    Page.objects.filter(pk=team.pk).update(slug="about")  # a draft at the address About is still live at
    response = admin_client.post(
        CHANGELIST, {"action": "publish_selected", "_selected_action": [team.pk, other.pk]}, follow=True
    )
    html = response.content.decode()
    assert "1 page published." in html and "Not published: “Team”: “About” is live at /about/." in html
    assert stored(other).is_published and not stored(team).is_published


def test_publish_actions_need_the_permission(client, django_user_model):
    c = editor(django_user_model, client, can_publish=False)
    p = page("alpha")
    html = c.get(CHANGELIST).content.decode()
    assert "publish_selected" not in html
    c.post(CHANGELIST, {"action": "publish_selected", "_selected_action": [p.pk]})
    assert not stored(p).is_published


def test_editor_with_permission_can_publish(client, django_user_model):
    c = editor(django_user_model, client, can_publish=True)
    p = page("alpha")
    assert "publish_selected" in c.get(CHANGELIST).content.decode()
    c.post(CHANGELIST, {"action": "publish_selected", "_selected_action": [p.pk]})
    assert stored(p).is_published


# --- Deleting a live page takes it off the site: it needs the publish permission -------------------------------


def test_without_the_permission_a_live_page_cannot_be_deleted(client, django_user_model, sent):
    c = editor(django_user_model, client, can_publish=False)
    live, drafted = page("alpha", live=True, title="Alpha"), page("beta")
    sent.clear()
    assert c.get(delete_url(live)).status_code == 403
    assert c.post(delete_url(live), {"post": "yes"}).status_code == 403
    assert Page.objects.filter(pk=live.pk).exists()
    assert c.post(delete_url(drafted), {"post": "yes"}).status_code == 302, "a draft is theirs to delete"
    assert not Page.objects.filter(pk=drafted.pk).exists() and sent == []


def test_without_the_permission_bulk_delete_refuses_naming_the_live_pages(client, django_user_model, sent):
    c = editor(django_user_model, client, can_publish=False)
    live, drafted = page("alpha", live=True, title="Alpha"), page("beta", title="Beta")
    sent.clear()
    response = c.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [live.pk, drafted.pk], "post": "yes"},
        follow=True,
    )
    html = response.content.decode()
    assert "Nothing was deleted: deleting a live page takes it off the site" in html and "Live: “Alpha”." in html
    assert "“Beta”" not in html.split("Nothing was deleted")[1].split("</li>")[0]
    assert Page.objects.count() == 2 and sent == []
    c.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [drafted.pk], "post": "yes"})
    assert not Page.objects.filter(pk=drafted.pk).exists()


def test_with_the_permission_deleting_a_live_page_takes_it_down(client, django_user_model, sent, committed):
    c = editor(django_user_model, client, can_publish=True)
    live = page("alpha", live=True, title="Alpha")
    BuildRequest.objects.all().delete()
    sent.clear()
    confirm = c.get(delete_url(live)).content.decode()
    assert 'id="live-delete-warning"' in confirm and "deleting it takes it off the site" in confirm
    with committed():
        assert c.post(delete_url(live), {"post": "yes"}).status_code == 302
    assert sent == [(signals.page_deleted, "alpha", "editor")]
    assert list(BuildRequest.objects.values_list("reason", flat=True)) == ["deleted “Alpha”"]


def test_bulk_delete_of_live_pages_sends_page_deleted_in_one_request(admin_client, sent, committed):
    a, b, c = page("alpha", live=True), page("beta"), page("gamma", live=True)
    BuildRequest.objects.all().delete()
    sent.clear()
    confirm = admin_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [a.pk, b.pk, c.pk]})
    assert "Live pages leave the site with the next build:</strong> “Alpha”, “Gamma”." in confirm.content.decode()
    with committed():
        admin_client.post(
            CHANGELIST, {"action": "delete_selected", "_selected_action": [a.pk, b.pk, c.pk], "post": "yes"}
        )
    assert not Page.objects.exists()
    assert sorted(s for _, s, _ in sent) == ["alpha", "gamma"] and {x for x, _, _ in sent} == {signals.page_deleted}
    assert BuildRequest.objects.count() == 1


# --- What the build system did, in words ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_editor_sees_what_the_build_system_did(admin_client):
    response = admin_client.post(ADD, form(_saveandpublish="1"), follow=True)
    html = response.content.decode()
    build = Build.objects.get()
    assert f"Build #{build.pk} has started; your change is live when it finishes." in html
    assert "recorded launch" not in html, "where it runs is for the build's page and the log"
    assert f"waiting for build #{build.pk}" in html, "the form's status: the build has not claimed yet"
    p = Page.objects.get(slug="alpha")
    response = admin_client.post(change_url(p), form(body="new", _saveandpublish="1"), follow=True)
    assert f"Your change will be in build #{build.pk}, which is starting." in response.content.decode()
    response = admin_client.post(change_url(p), form(body="newer", _continue="1"), follow=True)
    assert "Your change will be in" not in response.content.decode(), "a draft save requests no build"
    assert BuildRequest.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_failed_launch_is_a_warning_and_the_page_is_saved(admin_client):
    from publisher.launchers import LaunchError, recording

    recording.fail_next(LaunchError("Heroku rejected the API key (401)", status=401, needs_operator=True))
    response = admin_client.post(ADD, form(_saveandpublish="1"), follow=True)
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
