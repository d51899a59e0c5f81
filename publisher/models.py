import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator, RegexValidator
from django.db import models, transaction
from django.db.models.functions import Length
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone

from . import signals

# `\Z`, not `$`: in Python (and so in SQLite's REGEXP) `$` also matches before a final newline. PostgreSQL reads
# `\Z` the same way, so the validators and the check constraint below hold one rule.
SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*\Z"
SLUG_MAX_LENGTH = 100
# Characters in a page body: far more than any page needs, and a form post of it (settings.py,
# DATA_UPLOAD_MAX_MEMORY_SIZE) still reaches the form, so a longer body gets a message instead of a bare 400.
BODY_MAX_LENGTH = 1_000_000
# Names the build writes at the top level of a release (DESIGN §5), and a few it may write later.
RESERVED_SLUGS = frozenset(
    {
        "404",
        "assets",
        "css",
        "current",
        "favicon",
        "index",
        "page",
        "release",
        "releases",
        "robots",
        "sitemap",
        "static",
    }
)
# The draft's fields (what editors edit and save) and, for each, the field of the live version publish() copies it to.
CONTENT_FIELDS = ("title", "slug", "body")
LIVE_FIELDS = {"title": "live_title", "slug": "live_slug", "body": "live_body"}
# What only publish() and unpublish() write; a draft save leaves these as the database has them.
LIVE_STATE_FIELDS = ("is_published", "published_at", *LIVE_FIELDS.values())

slug_format = RegexValidator(
    re.compile(SLUG_PATTERN),
    "Use lowercase letters a-z, digits and single hyphens between them (no leading, trailing or double hyphens).",
    code="slug_format",
)


def validate_not_reserved(value):
    if value in RESERVED_SLUGS:
        raise ValidationError(
            "“%(value)s” is a name the site build writes at the top level; choose another slug. Reserved: %(names)s.",
            code="slug_reserved",
            params={"value": value, "names": ", ".join(sorted(RESERVED_SLUGS))},
        )


class BodyLengthValidator(MaxLengthValidator):
    """At most ``limit_value`` characters, said with both numbers written out: "The body is 1,200,000 ..."."""

    message = "The body is %(length)s characters; the limit is %(limit)s."
    code = "body_too_long"

    def __call__(self, value):
        if len(value) > self.limit_value:
            params = {"length": f"{len(value):,}", "limit": f"{self.limit_value:,}"}
            raise ValidationError(self.message, code=self.code, params=params)


class LimitedTextField(models.TextField):
    """A ``TextField`` whose form leaves the ``max_length`` check to the model's validators.

    ``max_length`` still gives the textarea its ``maxlength``; the form field's generic check ("Ensure this value
    has at most 1000000 characters") is dropped, so the message editors see is the model's.
    """

    def formfield(self, **kwargs):
        field = super().formfield(**kwargs)
        field.validators = [v for v in field.validators if type(v) is not MaxLengthValidator]
        return field


class LiveState(models.TextChoices):
    """How a page's draft stands against what is live: the page list's column and filter, the form's heading."""

    LIVE = "live", "live"
    CHANGED = "changed", "live, with unpublished changes"
    DRAFT = "draft", "draft"


class PageQuerySet(models.QuerySet):
    def with_live_state(self):
        """Annotate ``stored_live_state`` (a ``LiveState`` value) computed in SQL, so bodies need not be loaded."""
        return self.annotate(stored_live_state=_live_state_sql())

    def in_live_state(self, state):
        return self.alias(live_state_for_filter=_live_state_sql()).filter(live_state_for_filter=LiveState(state))


def _live_state_sql():
    return models.Case(
        models.When(is_published=False, then=models.Value(LiveState.DRAFT.value)),
        models.When(
            models.Q(title=models.F("live_title"), slug=models.F("live_slug"), body=models.F("live_body")),
            then=models.Value(LiveState.LIVE.value),
        ),
        default=models.Value(LiveState.CHANGED.value),
        output_field=models.CharField(),
    )


class Page(models.Model):
    title = models.CharField(max_length=200)
    slug = models.CharField(
        max_length=SLUG_MAX_LENGTH,
        unique=True,
        validators=[slug_format, validate_not_reserved],
        help_text="The page's address on the site: lowercase letters, digits and hyphens, at most 100 characters.",
    )
    body = LimitedTextField(
        blank=True,
        max_length=BODY_MAX_LENGTH,
        validators=[BodyLengthValidator(BODY_MAX_LENGTH)],
        help_text="Plain text; blank lines separate paragraphs. At most 1,000,000 characters.",
    )
    is_published = models.BooleanField("published", default=False, editable=False, db_index=True)
    published_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The live version (DESIGN §2): what builds render. title/slug/body above are the draft editors save; publish()
    # copies them here. Null slug: nothing is live.
    live_title = models.CharField(max_length=200, blank=True, editable=False)
    live_slug = models.CharField(max_length=SLUG_MAX_LENGTH, null=True, blank=True, unique=True, editable=False)
    live_body = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PageQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        permissions = [("publish_page", "Can publish and unpublish pages")]
        constraints = [
            # The slug rules again in the database, so writes that skip save() (update(), bulk_create, raw SQL)
            # cannot store a slug the build would write outside its folder. SQLite: Django's REGEXP function.
            models.CheckConstraint(
                condition=models.Q(slug__regex=SLUG_PATTERN)
                & ~models.Q(slug__in=sorted(RESERVED_SLUGS))
                & models.Q(LessThanOrEqual(Length("slug"), SLUG_MAX_LENGTH)),
                name="publisher_page_slug_valid",
                violation_error_message="The slug breaks the slug rules.",
            ),
            models.CheckConstraint(
                condition=models.Q(live_slug__isnull=True)
                | (
                    models.Q(live_slug__regex=SLUG_PATTERN)
                    & ~models.Q(live_slug__in=sorted(RESERVED_SLUGS))
                    & models.Q(LessThanOrEqual(Length("live_slug"), SLUG_MAX_LENGTH))
                ),
                name="publisher_page_live_slug_valid",
                violation_error_message="The live slug breaks the slug rules.",
            ),
        ]

    def __str__(self):
        return self.title

    # --- The draft, the live version, and the only places the page signals are sent (DESIGN §2) -----------------
    #
    # One user action sends exactly one signal, inside the transaction that changes the page, so the build request
    # its receiver records commits with the content or not at all:
    #   publish()   → page_published (nothing was live) or page_changed (a live page's changes were published)
    #   unpublish() → page_unpublished;   delete() of a live page → page_deleted;   save() → nothing.

    def save(self, *args, **kwargs):
        """Save the draft. Never changes what is live and sends no signal: a draft save requests no build.

        A stored page's live version is left as the database has it, whatever this instance holds (only
        ``publish()`` and ``unpublish()`` write it); a new page is inserted as it is. Title, slug and body are
        validated first (``ValidationError``), without a query.
        """
        written = kwargs.get("update_fields")
        if written is not None and set(written) & set(LIVE_STATE_FIELDS):
            raise ValueError("The live version is written by publish() and unpublish(), not by save().")
        deferred = self.get_deferred_fields()
        fields = CONTENT_FIELDS if written is None else [f for f in CONTENT_FIELDS if f in written]
        self.validate_content(fields=[f for f in fields if f not in deferred])
        if written is None and self.pk is not None and not self._state.adding:
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in LIVE_STATE_FIELDS and f.attname not in deferred
            ]
        super().save(*args, **kwargs)

    def validate_content(self, *, fields=CONTENT_FIELDS):
        """Raise ``ValidationError`` (the form's messages) unless ``fields`` keep their rules. No queries."""
        self.clean_fields(exclude={f.name for f in self._meta.fields if f.name not in fields})

    def validate_can_go_live(self):
        """Raise ``ValidationError`` on ``slug`` when another page is live at this draft's address. One query."""
        other = type(self).objects.filter(live_slug=self.slug).exclude(pk=self.pk).values_list("title", flat=True)
        title = other.first()
        if title is not None:
            raise ValidationError(
                {
                    "slug": ValidationError(
                        "“%(title)s” is live at /%(slug)s/. Publish its new slug or unpublish it first, or choose "
                        "another slug.",
                        code="slug_live_elsewhere",
                        params={"title": title, "slug": self.slug},
                    )
                }
            )

    def publish(self, *, by=None):
        """Make the draft (with any unsaved edits) live and request a build. Returns False when the draft is what
        is live already: then nothing goes live and nothing is sent (unsaved edits are still saved, as a draft).

        Validated first (``ValidationError``): a refused publish changes nothing. ``published_at`` is the
        database's clock, the one builds record their start with, so "is this publish live?" compares like times.
        """
        from .builds import now  # publisher.builds imports this module

        self.validate_content()
        with transaction.atomic():
            stored = self._locked_row()
            was_live = bool(stored and stored["is_published"])
            if was_live and self._draft() == tuple(stored[LIVE_FIELDS[f]] for f in CONTENT_FIELDS):
                if self._draft() != tuple(stored[f] for f in CONTENT_FIELDS):
                    self.save()
                self._take_live_state(stored)
                return False
            self.validate_can_go_live()
            self.live_title, self.live_slug, self.live_body = self._draft()
            self.is_published, self.published_at = True, now()
            super().save()  # the draft and its live copy together (this class's save() leaves live fields alone)
            signal = signals.page_changed if was_live else signals.page_published
            signal.send(sender=type(self), page=self, by=by)
        return True

    def unpublish(self, *, by=None):
        """Take the live version off the site and request a build; the draft stays. Returns False when nothing was
        live. ``published_at`` becomes the time of the take-down: the live version last changed then."""
        from .builds import now

        with transaction.atomic():
            stored = self._locked_row()
            if not (stored and stored["is_published"]):
                if stored:
                    self._take_live_state(stored)
                return False
            self.is_published, self.published_at = False, now()
            self.live_title, self.live_slug, self.live_body = "", None, ""
            super().save(update_fields=[*LIVE_STATE_FIELDS, "updated_at"])
            signals.page_unpublished.send(sender=type(self), page=self, by=by)
        return True

    def delete(self, *args, by=None, **kwargs):
        """Delete the page; a live page also leaves the site (``page_deleted``, one build request)."""
        with transaction.atomic():
            # Sent before the row goes, so receivers still see the page's id; the transaction binds both.
            if type(self).objects.filter(pk=self.pk, is_published=True).exists():
                signals.page_deleted.send(sender=type(self), page=self, by=by)
            return super().delete(*args, **kwargs)

    def _draft(self):
        return tuple(getattr(self, f) for f in CONTENT_FIELDS)

    def _locked_row(self):
        """The stored draft and live version, locked until the transaction ends; None for a page not saved yet."""
        if self.pk is None or self._state.adding:
            return None
        row = (
            type(self)
            .objects.select_for_update()
            .filter(pk=self.pk)
            .values(*CONTENT_FIELDS, *LIVE_STATE_FIELDS)
            .first()
        )
        if row is None:
            raise type(self).DoesNotExist(f"Page #{self.pk} was deleted.")
        return row

    def _take_live_state(self, stored):
        for name in LIVE_STATE_FIELDS:
            setattr(self, name, stored[name])

    @property
    def live_state(self):
        """``LiveState`` of this instance as it stands (the admin's lists use ``with_live_state()`` instead)."""
        if not self.is_published:
            return LiveState.DRAFT
        live = tuple(getattr(self, LIVE_FIELDS[f]) for f in CONTENT_FIELDS)
        return LiveState.LIVE if live == self._draft() else LiveState.CHANGED

    @classmethod
    def published_copy(cls, *, slug, title, body="", published_at=None, **fields):
        """An unsaved page whose draft is live as it stands (for ``bulk_create`` in tests, benchmarks, fixtures)."""
        return cls(
            slug=slug,
            title=title,
            body=body,
            is_published=True,
            published_at=published_at or timezone.now(),
            live_slug=slug,
            live_title=title,
            live_body=body,
            **fields,
        )

    def site_url(self, base_url):
        """The page's address on the built site under ``base_url`` (``SITE_URL``): where its live version is."""
        return f"{base_url.rstrip('/')}/{self.live_slug or self.slug}/"


class BuildState(models.TextChoices):
    QUEUED = "queued"
    LAUNCHING = "launching"
    LAUNCHED = "launched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


#: Builds that hold the one active slot: launched or being launched, or running.
ACTIVE_STATES = (BuildState.LAUNCHING, BuildState.LAUNCHED, BuildState.RUNNING)
#: Builds that are not finished: the queued one and the active one. Queries use this exact tuple (partial index).
OPEN_STATES = (BuildState.QUEUED, *ACTIVE_STATES)


class Build(models.Model):
    """One build of the whole site. Its ``state`` is written only by ``publisher.builds``."""

    state = models.CharField(max_length=16, choices=BuildState.choices, default=BuildState.QUEUED, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    launched_at = models.DateTimeField(null=True, blank=True, editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    launcher = models.CharField(max_length=100, blank=True, editable=False)
    handle = models.JSONField(null=True, blank=True, editable=False)
    launch_token = models.CharField(max_length=64, blank=True, editable=False)
    attempt = models.PositiveIntegerField(default=1, editable=False)
    next_attempt_at = models.DateTimeField(null=True, blank=True, editable=False)
    error = models.TextField(blank=True, editable=False)
    # The last launch failure, structured (DESIGN §8), so the banner and the doctor need not parse ``error``.
    error_status = models.PositiveSmallIntegerField(null=True, blank=True, editable=False, help_text="HTTP status")
    error_id = models.CharField(max_length=100, blank=True, editable=False, help_text="the platform's error id")
    error_request_id = models.CharField(max_length=100, blank=True, editable=False)
    needs_operator = models.BooleanField(default=False, editable=False, help_text="a person must act")
    # Cancelling: the canceller writes ``cancelled`` and this time; stopping the process happens outside its request.
    cancelled_by = models.CharField(max_length=150, blank=True, editable=False)
    stop_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    stopped_at = models.DateTimeField(null=True, blank=True, editable=False)
    stop_error = models.TextField(blank=True, editable=False)
    pages_done = models.PositiveIntegerField(null=True, blank=True, editable=False)
    pages_total = models.PositiveIntegerField(null=True, blank=True, editable=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    progress_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="when pages_done last moved")
    manual = models.BooleanField(default=False, editable=False, help_text="started by a person at a shell")
    release = models.CharField(max_length=100, blank=True, editable=False)
    published = models.JSONField(
        null=True, blank=True, editable=False, help_text="where the release went: destination, files, bytes"
    )
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries", editable=False
    )
    # Reports: each is sent by whoever sets its time with a conditional update.
    alerted_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="operator alert sent")
    failure_reported_at = models.DateTimeField(null=True, blank=True, editable=False)
    stall_reported_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]
        permissions = [
            ("request_build", "Can rebuild the site now"),
            ("cancel_build", "Can cancel builds"),
            ("rollback_site", "Can roll the live site back to an earlier release"),
        ]
        indexes = [
            # The sweep's and the dispatcher's frequent lookups touch only the few open builds, whatever the history.
            models.Index(fields=["id"], condition=models.Q(state__in=OPEN_STATES), name="publisher_build_open"),
            models.Index(fields=["id"], condition=models.Q(state__in=ACTIVE_STATES), name="publisher_build_active"),
            # Pruning by age, and "the last success" for consecutive failures.
            models.Index(fields=["state", "created_at"], name="publisher_build_state_created"),
            models.Index(fields=["state", "id"], name="publisher_build_state_id"),
            # Page statuses: the builds of a state that started since the oldest publish in a page list.
            models.Index(fields=["state", "started_at"], name="publisher_build_state_started"),
        ]
        constraints = [
            # At most one active build. The active states differ, so a unique index on `state` cannot hold this:
            # a partial unique index on a constant does (SQLite and PostgreSQL).
            models.UniqueConstraint(
                models.Value(1), condition=models.Q(state__in=ACTIVE_STATES), name="publisher_one_active_build"
            ),
            models.UniqueConstraint(
                fields=["state"], condition=models.Q(state=BuildState.QUEUED), name="publisher_one_queued_build"
            ),
        ]

    def __str__(self):
        return f"Build #{self.pk} ({self.state})"


class BuildRequest(models.Model):
    """One user action or command that asked for the site to be rebuilt; committed with the content change."""

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    reason = models.CharField(max_length=500)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    build = models.ForeignKey(Build, null=True, blank=True, on_delete=models.SET_NULL, related_name="requests")
    page = models.ForeignKey(
        Page, null=True, blank=True, on_delete=models.SET_NULL, related_name="build_requests", editable=False
    )
    retry_of = models.ForeignKey(Build, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["created_at"], name="publisher_request_unattached", condition=models.Q(build=None)),
            models.Index(fields=["created_at"], name="publisher_request_created"),
            models.Index(fields=["page", "-id"], name="publisher_request_page"),
        ]

    def __str__(self):
        return f"Request #{self.pk}: {self.reason}"


class SweepStatus(models.Model):
    """One row: when the safety-net sweep last ran and what it did (for the admin and operators)."""

    ran_at = models.DateTimeField(null=True, blank=True)
    took_ms = models.PositiveIntegerField(default=0)
    summary = models.TextField(blank=True)
    passes = models.PositiveBigIntegerField(default=0)
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "sweep status"
        verbose_name_plural = "sweep status"

    def __str__(self):
        return f"Sweep last ran at {self.ran_at:%Y-%m-%d %H:%M:%S}" if self.ran_at else "Sweep has not run"
