import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from publisher import signals
from publisher.models import RESERVED_SLUGS, Page

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent():
    """Every page signal sent, as (name, page pk, by)."""
    received = []
    receivers = []
    for name in ("page_published", "page_unpublished", "page_changed", "page_deleted"):

        def receiver(sender, page, by, _name=name, **kwargs):
            received.append((_name, page.pk, by))

        getattr(signals, name).connect(receiver, weak=False)
        receivers.append((getattr(signals, name), receiver))
    yield received
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def make_page(slug="hello", **fields):
    page = Page(title=fields.pop("title", "Hello"), slug=slug, body=fields.pop("body", "Body"), **fields)
    page.save()
    return page


@pytest.mark.parametrize("slug", ["a", "about", "about-us", "2026-report", "x" * 100, "a1-b2-c3"])
def test_valid_slugs(slug):
    Page(title="t", slug=slug).full_clean()


@pytest.mark.parametrize(
    "slug",
    ["", "About", "about_us", "-about", "about-", "about--us", "a b", "über", "a/b", "a.html", "x" * 101, "é"],
)
def test_bad_slugs_name_the_rule(slug):
    with pytest.raises(ValidationError) as info:
        Page(title="t", slug=slug).full_clean()
    messages = " ".join(info.value.message_dict["slug"])
    assert any(word in messages for word in ("lowercase", "blank", "at most 100")), messages


@pytest.mark.parametrize("slug", sorted(RESERVED_SLUGS & {"index", "sitemap", "static", "404", "robots", "page"}))
def test_reserved_slugs_are_refused(slug):
    with pytest.raises(ValidationError) as info:
        Page(title="t", slug=slug).full_clean()
    assert "reserved" in " ".join(info.value.message_dict["slug"]).lower() or "the site build writes" in str(info.value)


def test_design_reserved_names_are_all_reserved():
    assert {"index", "sitemap", "static", "404", "robots", "page"} <= RESERVED_SLUGS


def test_saving_a_draft_sends_nothing(sent):
    page = make_page()
    page.body = "changed"
    page.save()
    assert sent == []


def test_publish_sends_page_published_once_and_records_time(sent, django_user_model):
    user = django_user_model.objects.create(username="ed")
    page = make_page()
    assert page.publish(by=user) is True
    page.refresh_from_db()
    assert page.is_published and page.published_at is not None
    assert sent == [("page_published", page.pk, user)]


def test_publishing_an_unchanged_live_page_does_nothing(sent):
    page = make_page()
    page.publish()
    sent.clear()
    assert page.publish() is False
    assert Page.objects.get(pk=page.pk).updated_at == page.updated_at
    assert sent == []


def test_publishing_a_live_page_with_edits_sends_page_changed(sent):
    page = make_page()
    page.publish()
    sent.clear()
    page.title = "New title"
    assert page.publish() is True
    assert sent == [("page_changed", page.pk, None)]


def test_saving_a_live_page_with_changes_sends_page_changed(sent):
    page = make_page()
    page.publish()
    sent.clear()
    page.save()  # no change: nothing
    assert sent == []
    page.body = "new body"
    page.save(by="someone")
    assert sent == [("page_changed", page.pk, "someone")]


def test_unpublish(sent):
    page = make_page()
    assert page.unpublish() is False
    page.publish()
    sent.clear()
    assert page.unpublish() is True
    page.refresh_from_db()
    assert not page.is_published and page.published_at is None
    assert sent == [("page_unpublished", page.pk, None)]


def test_deleting_a_live_page_sends_page_deleted_and_a_draft_nothing(sent):
    draft = make_page("draft")
    live = make_page("live")
    live.publish()
    sent.clear()
    draft.delete()
    assert sent == []
    pk = live.pk
    live.delete(by="ed")
    assert sent == [("page_deleted", pk, "ed")]


def test_signals_are_sent_inside_the_content_transaction():
    """A receiver that fails rolls the change back with it: what receivers write commits with the content."""
    page = make_page()

    def boom(**kwargs):
        raise RuntimeError("receiver failed")

    signals.page_published.connect(boom, weak=False)
    try:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                page.publish()
    finally:
        signals.page_published.disconnect(boom)
    assert Page.objects.get(pk=page.pk).is_published is False


def test_site_url():
    assert Page(slug="about").site_url("https://example.com/site") == "https://example.com/site/about/"
    assert Page(slug="about").site_url("https://example.com/") == "https://example.com/about/"
