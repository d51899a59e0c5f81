"""Pages: the slug and body rules, on every save and in the database (drafts and publishing: test_drafts.py)."""

import pytest
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import DataError, IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from publisher.models import RESERVED_SLUGS, Page

pytestmark = pytest.mark.django_db


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


# --- The slug rules hold on every save and in the database, not only in forms (DESIGN §2) ---------------------

# Slugs that would write outside the release, or clash with what the build writes, or break the rules otherwise.
HOSTILE_SLUGS = ["../../x", "/tmp/x", "..", "a/b", "", "index", "sitemap", "x" * 101, "About", "about\n", "a\x00b"]


@pytest.mark.parametrize("slug", HOSTILE_SLUGS)
def test_save_refuses_a_bad_slug_before_touching_the_database(slug, django_assert_num_queries):
    page = Page(title="t", slug=slug)
    with django_assert_num_queries(0), pytest.raises(ValidationError) as info:
        page.save()
    messages = " ".join(info.value.message_dict["slug"])
    assert any(rule in messages for rule in ("lowercase", "blank", "at most 100", "the site build writes")), messages
    assert not Page.objects.exists()


@pytest.mark.parametrize("slug", ["../../x", "/tmp/x", "index", ""])
def test_the_python_api_refuses_bad_slugs(slug):
    with pytest.raises(ValidationError):
        Page.objects.create(slug=slug, title="x")
    with pytest.raises(ValidationError):
        Page(slug=slug, title="x").publish()
    page = make_page("fine")
    page.slug = slug
    with pytest.raises(ValidationError):
        page.publish()
    assert page.is_published is False  # a later save() of the fixed page does not publish it by surprise
    assert list(Page.objects.values_list("slug", "is_published")) == [("fine", False)]


def test_save_refuses_an_empty_or_over_long_title():
    for title in ("", "t" * 201):
        with pytest.raises(ValidationError) as info:
            Page(title=title, slug="fine").save()
        assert "title" in info.value.message_dict
    assert not Page.objects.exists()


def test_save_checks_only_the_fields_it_writes():
    page = make_page("fine")
    page.slug = "../x"  # not written by this save
    page.save(update_fields=["title"])
    assert Page.objects.get(pk=page.pk).slug == "fine"


@pytest.mark.postgres
def test_the_error_names_the_constraint():
    """What the database says when something bypasses ``save()``: the constraint's name, on both databases."""
    make_page("fine")
    with pytest.raises(IntegrityError, match="publisher_page_slug_valid"), transaction.atomic():
        Page.objects.update(slug="../x")


@pytest.mark.postgres
@pytest.mark.parametrize("slug", ["../x", "/tmp/x", "a/b", "", "index", "404", "About", "about\n", "-a", "a--b"])
def test_the_database_refuses_bad_slugs_from_update_bulk_create_and_raw_sql(slug):
    page = make_page("fine")
    with pytest.raises(IntegrityError), transaction.atomic():
        Page.objects.filter(pk=page.pk).update(slug=slug)
    with pytest.raises(IntegrityError), transaction.atomic():
        Page.objects.bulk_create([Page(slug=slug, title="x")])
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE publisher_page SET slug = %s WHERE id = %s", [slug, page.pk])
    assert list(Page.objects.values_list("slug", flat=True)) == ["fine"]


@pytest.mark.postgres
def test_the_database_refuses_over_long_slugs_and_takes_the_longest_good_one():
    page = make_page("fine")
    # SQLite has only the check constraint; PostgreSQL's varchar(100) refuses first (a DataError).
    with pytest.raises((IntegrityError, DataError)), transaction.atomic():
        Page.objects.filter(pk=page.pk).update(slug="x" * 101)
    Page.objects.filter(pk=page.pk).update(slug="x" * 100)
    Page.objects.bulk_create([Page(slug="a1-b2", title="x"), Page(slug="2026-report", title="x")])
    assert sorted(Page.objects.values_list("slug", flat=True)) == ["2026-report", "a1-b2", "x" * 100]


@pytest.mark.postgres
def test_the_constraint_and_the_validators_agree_on_every_reserved_name():
    page = make_page("fine")
    for slug in sorted(RESERVED_SLUGS):
        with pytest.raises(IntegrityError), transaction.atomic():
            Page.objects.filter(pk=page.pk).update(slug=slug)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_migration_names_stored_pages_that_break_the_rules():
    """Rows stored before the constraint existed stop the migration with a message saying which pages to fix."""
    executor = MigrationExecutor(connection)
    before, after = [("publisher", "0004_build_indexes")], executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    try:
        old_page = executor.loader.project_state(before).apps.get_model("publisher", "Page")
        old_page.objects.create(slug="../outside", title="x")
        old_page.objects.create(slug="good", title="x")
        executor = MigrationExecutor(connection)
        with pytest.raises(CommandError, match=r"#\d+ '\.\./outside'") as info:
            executor.migrate([("publisher", "0005_page_checks")])
        assert "good" not in str(info.value)
        old_page.objects.filter(slug="../outside").update(slug="outside")
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(after)
    assert list(Page.objects.order_by("slug").values_list("slug", flat=True)) == ["good", "outside"]


# --- The body has a limit an editor can act on ------------------------------------------------------------------


def test_a_body_at_the_limit_saves():
    page = make_page(body="x" * 1_000_000)
    assert len(Page.objects.get(pk=page.pk).body) == 1_000_000


def test_a_body_over_the_limit_is_refused_with_the_numbers(django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(ValidationError) as info:
        Page(title="t", slug="big", body="x" * 1_234_567).save()
    assert info.value.message_dict["body"] == ["The body is 1,234,567 characters; the limit is 1,000,000."]
