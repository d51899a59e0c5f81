"""Drafts and the live version (DESIGN §2): saving never changes what is live; publish, unpublish and deleting a
live page each send exactly one signal and make exactly one build request."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from publisher import signals
from publisher.conf import get_config
from publisher.models import BuildRequest, LiveState, Page
from publisher.progress import Progress
from publisher.release import build_release

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent():
    """Every page signal sent, as (name, page pk, by)."""
    received = []

    def receiver(signal, sender, page, by, **kwargs):
        received.append((NAMES[signal], page.pk, by))

    for signal in signals.PAGE_SIGNALS:
        signal.connect(receiver, weak=False)
    yield received
    for signal in signals.PAGE_SIGNALS:
        signal.disconnect(receiver)


NAMES = {
    signals.page_published: "published",
    signals.page_unpublished: "unpublished",
    signals.page_changed: "changed",
    signals.page_deleted: "deleted",
}


def draft(slug="hello", title="Hello", body="Body"):
    page = Page(slug=slug, title=title, body=body)
    page.save()
    return page


def live_version(page):
    return tuple(Page.objects.filter(pk=page.pk).values_list("live_title", "live_slug", "live_body", "is_published")[0])


def requests():
    return list(BuildRequest.objects.order_by("pk").values_list("reason", "page_id"))


@pytest.fixture
def action(django_capture_on_commit_callbacks):
    """``with action():`` one user action, as if it committed: its request is dispatched (attached to a build), so
    the next action makes its own (requests made in one transaction join: one action, one request)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


# --- Saving is a draft -----------------------------------------------------------------------------------------


def test_saving_a_draft_sends_nothing_and_requests_nothing(sent):
    page = draft()
    page.body = "changed"
    page.save()
    assert sent == [] and requests() == []
    assert live_version(page) == ("", None, "", False)


def test_saving_a_live_page_keeps_the_live_version(sent):
    page = draft()
    page.publish()
    sent.clear()
    page.title, page.slug, page.body = "New title", "new-slug", "new body"
    page.save()
    assert sent == [] and len(requests()) == 1  # only the publish's
    assert live_version(page) == ("Hello", "hello", "Body", True)
    stored = Page.objects.get(pk=page.pk)
    assert (stored.title, stored.slug, stored.body) == ("New title", "new-slug", "new body")
    assert stored.live_state == LiveState.CHANGED


@pytest.mark.postgres
def test_a_stale_instance_saved_after_a_publish_does_not_undo_it():
    """save() writes no live field, so an editor's older copy of the page cannot put back what was live before."""
    page = draft()
    stale = Page.objects.get(pk=page.pk)  # loaded before the publish: its live fields say "nothing is live"
    page.publish()
    stale.body = "edited later"
    stale.save()
    assert live_version(page) == ("Hello", "hello", "Body", True)
    assert Page.objects.get(pk=page.pk).body == "edited later"


def test_save_refuses_to_write_the_live_version():
    page = draft()
    with pytest.raises(ValueError, match="publish"):
        page.save(update_fields=["live_body"])


# --- Publish ---------------------------------------------------------------------------------------------------


def test_publishing_a_draft_makes_it_live_with_one_signal_and_one_request(sent, clock, django_user_model):
    editor = django_user_model.objects.create(username="ed")
    page = draft()
    assert page.publish(by=editor) is True
    assert sent == [("published", page.pk, editor)]
    assert requests() == [("published “Hello”", page.pk)]
    stored = Page.objects.get(pk=page.pk)
    assert live_version(page) == ("Hello", "hello", "Body", True)
    assert stored.published_at == clock.now  # the database's clock, the one builds record their start with
    assert BuildRequest.objects.get().requested_by == editor


def test_publishing_a_new_page_inserts_it_live(sent):
    page = Page(slug="new", title="New", body="b")
    assert page.publish() is True
    assert live_version(page) == ("New", "new", "b", True)
    assert sent == [("published", page.pk, None)] and len(requests()) == 1


def test_publishing_changes_of_a_live_page_sends_page_changed(sent, clock, action):
    page = draft()
    with action():
        page.publish()
    sent.clear()
    clock.advance(60)
    page.body = "second version"
    page.save()
    assert page.publish() is True  # the saved draft goes live
    assert sent == [("changed", page.pk, None)]
    assert live_version(page) == ("Hello", "hello", "second version", True)
    assert Page.objects.get(pk=page.pk).published_at == clock.now
    assert [reason for reason, _ in requests()] == ["published “Hello”", "published changes to “Hello”"]


def test_publish_takes_unsaved_edits_along(sent):
    page = draft()
    page.publish()
    page.title = "Edited in memory"
    assert page.publish() is True
    stored = Page.objects.get(pk=page.pk)
    assert stored.title == stored.live_title == "Edited in memory"


def test_publishing_an_unchanged_live_page_does_nothing(sent, clock):
    page = draft()
    page.publish()
    sent.clear()
    before = Page.objects.values("updated_at", "published_at").get(pk=page.pk)
    clock.advance(60)
    assert page.publish() is False
    assert Page.objects.values("updated_at", "published_at").get(pk=page.pk) == before
    assert sent == [] and len(requests()) == 1


def test_publish_of_a_draft_put_back_as_it_is_live_saves_it_and_sends_nothing(sent):
    page = draft()
    page.publish()
    page.body = "an edit"
    page.save()
    sent.clear()
    page.body = "Body"  # back to the live text
    assert page.publish() is False
    assert Page.objects.get(pk=page.pk).live_state == LiveState.LIVE
    assert sent == [] and len(requests()) == 1


@pytest.mark.parametrize("slug", ["../../x", "index", "", "Bad Slug"])
def test_a_bad_draft_is_refused_before_anything_is_live(sent, slug):
    page = draft()
    page.publish()
    sent.clear()
    page.slug = slug
    with pytest.raises(ValidationError) as info:
        page.publish()
    assert "slug" in info.value.message_dict
    assert live_version(page) == ("Hello", "hello", "Body", True)
    assert Page.objects.get(pk=page.pk).slug == "hello"
    assert sent == [] and len(requests()) == 1
    with pytest.raises(ValidationError):
        Page(slug=slug, title="x").publish()
    assert Page.objects.count() == 1


def test_a_slug_another_live_page_still_has_is_refused_on_publish(sent):
    """The draft of "about" moved to "about-us"; its old address is live until it publishes. "team" may save that
    slug as a draft but not put it live: two pages at one address."""
    about = draft("about", "About")
    about.publish()
    about.slug = "about-us"
    about.save()
    team = draft("about", "Team")  # the draft slug is free
    sent.clear()
    with pytest.raises(ValidationError) as info:
        team.publish()
    assert info.value.message_dict["slug"] == [
        "“About” is live at /about/. Publish its new slug or unpublish it first, or choose another slug."
    ]
    assert live_version(team) == ("", None, "", False) and sent == []
    assert about.publish() is True  # about moves to /about-us/
    assert team.publish() is True
    assert sorted(Page.objects.values_list("live_slug", flat=True)) == ["about", "about-us"]


# --- Unpublish and delete --------------------------------------------------------------------------------------


def test_unpublish_takes_the_live_version_down_and_keeps_the_draft(sent, clock, action):
    page = draft()
    assert page.unpublish() is False and sent == []
    with action():
        page.publish()
    sent.clear()
    clock.advance(30)
    assert page.unpublish(by="ed") is True
    assert sent == [("unpublished", page.pk, "ed")]
    stored = Page.objects.get(pk=page.pk)
    assert live_version(page) == ("", None, "", False)
    assert (stored.title, stored.slug, stored.body) == ("Hello", "hello", "Body")
    assert stored.published_at == clock.now, "when the live version last changed: the take-down"
    assert [reason for reason, _ in requests()] == ["published “Hello”", "unpublished “Hello”"]
    assert page.unpublish() is False and len(sent) == 1


def test_deleting_a_live_page_sends_page_deleted_and_a_draft_nothing(sent, action):
    drafted = draft("draft")
    live = draft("live", "Live")
    with action():
        live.publish()
    sent.clear()
    drafted.delete()
    assert sent == [] and len(requests()) == 1
    pk = live.pk
    live.delete(by="ed")
    assert sent == [("deleted", pk, "ed")]
    assert requests()[-1] == ("deleted “Live”", None)  # the page is gone; the request stays


def test_an_unpublished_page_is_deleted_without_a_request(sent, action):
    page = draft()
    with action():
        page.publish()
    with action():
        page.unpublish()
    sent.clear()
    page.delete()
    assert sent == [] and len(requests()) == 2


# --- One user action, one signal, one request ------------------------------------------------------------------


def _new_page_published(page):
    Page(slug="other", title="Other").publish()


ACTIONS = {
    "publish a draft": lambda page: page.publish(),
    "publish changes": lambda page: (setattr(page, "body", "v2"), page.publish()),
    "unpublish": lambda page: page.unpublish(),
    "delete": lambda page: page.delete(),
    "publish a new page": _new_page_published,
}
EXPECTED = {
    "publish a draft": "published",
    "publish changes": "changed",
    "unpublish": "unpublished",
    "delete": "deleted",
    "publish a new page": "published",
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_each_action_sends_exactly_one_signal_and_makes_exactly_one_request(sent, action):
    page = draft()
    if action != "publish a draft":
        page.publish()
    sent.clear()
    BuildRequest.objects.all().delete()
    with transaction.atomic():
        ACTIONS[action](page)
    assert [name for name, _, _ in sent] == [EXPECTED[action]]
    assert BuildRequest.objects.count() == 1


def test_a_batch_in_one_transaction_makes_one_request(sent):
    pages = [draft(f"p{i}", f"P{i}") for i in range(3)]
    with transaction.atomic():
        for page in pages:
            page.publish()
    assert len(sent) == 3
    ((reason, page_id),) = requests()
    assert reason.count("; ") == 2 and page_id == pages[0].pk


def test_signals_are_sent_inside_the_content_transaction():
    """A receiver that fails rolls the publish back with it: what receivers write commits with the content."""
    page = draft()

    def boom(**kwargs):
        raise RuntimeError("receiver failed")

    signals.page_published.connect(boom, weak=False)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            page.publish()
    finally:
        signals.page_published.disconnect(boom)
    assert live_version(page) == ("", None, "", False)
    assert not BuildRequest.objects.exists()


# --- Live state: the instance and the database say the same ----------------------------------------------------


@pytest.mark.postgres
def test_live_state_of_instances_and_in_sql():
    draft("never")
    live = draft("live")
    live.publish()
    changed = draft("changed")
    changed.publish()
    changed.body = "edited"
    changed.save()
    gone = draft("gone")
    gone.publish()
    gone.unpublish()
    expected = {"never": LiveState.DRAFT, "live": LiveState.LIVE, "changed": LiveState.CHANGED, "gone": "draft"}
    assert {p.slug: p.live_state for p in Page.objects.all()} == expected
    annotated = Page.objects.with_live_state().defer("body", "live_body")
    assert {p.slug: p.stored_live_state for p in annotated} == expected
    for state in LiveState:
        assert sorted(Page.objects.in_live_state(state).values_list("slug", flat=True)) == sorted(
            slug for slug, s in expected.items() if s == state
        )


def test_site_url_is_the_live_address():
    page = draft("about")
    page.publish()
    page.slug = "about-us"
    page.save()
    assert page.site_url("https://example.com/site") == "https://example.com/site/about/"
    assert Page(slug="about").site_url("https://example.com/") == "https://example.com/about/"


# --- The build reads only live versions -----------------------------------------------------------------------


def test_a_saved_draft_never_reaches_a_release(site_root):
    page = Page(slug="hello", title="Live title", body="The live text.")
    page.publish()
    page.title, page.body = "Draft title", "The draft text, not ready."
    page.save()
    Page(slug="unready", title="Never published", body="A draft only.").save()
    moved = Page(slug="old-address", title="Moved", body="m")
    moved.publish()
    moved.slug = "new-address"
    moved.save()
    build_release(get_config(), build_id=1, attempt=1, progress=Progress())
    current = site_root / "current"
    text = "".join(path.read_text() for path in current.rglob("*") if path.suffix in (".html", ".xml"))
    assert "The live text." in text and "Live title" in text
    assert "Draft title" not in text and "draft text" not in text and "Never published" not in text
    assert (current / "old-address" / "index.html").exists()
    assert not (current / "new-address").exists() and not (current / "unready").exists()
    assert "/old-address/" in (current / "sitemap.xml").read_text()


def test_published_copy_is_live_as_it_stands(site_root):
    Page.objects.bulk_create([Page.published_copy(slug="bulk", title="Bulk", body="b")])
    stored = Page.objects.get()
    assert stored.live_state == LiveState.LIVE and stored.published_at is not None
    build_release(get_config(), build_id=1, attempt=1, progress=Progress())
    assert (site_root / "current" / "bulk" / "index.html").exists()


def test_published_at_moves_only_when_the_live_version_changes(clock):
    page = draft()
    page.publish()
    first = Page.objects.get(pk=page.pk).published_at
    clock.advance(3600)
    page.body = "draft edit"
    page.save()
    assert Page.objects.get(pk=page.pk).published_at == first
    page.publish()
    assert Page.objects.get(pk=page.pk).published_at == first + timedelta(seconds=3600)
