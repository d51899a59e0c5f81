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
# The fields whose change alters what the site shows.
CONTENT_FIELDS = ("title", "slug", "body")

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

    # --- Saving, publishing and deleting: the only places the page signals are sent --------------------------

    def save(self, *args, by=None, **kwargs):
        """Save, and send the one page signal that this change means for the live site (if any).

        The signal is sent inside the same transaction as the row change, so what its receivers write commits
        with the content or not at all. Title, slug and body are validated first (``ValidationError``).
        """
        written = kwargs.get("update_fields")
        self.validate_content(fields=CONTENT_FIELDS if written is None else [f for f in CONTENT_FIELDS if f in written])
        with transaction.atomic():
            before = None
            if self.pk is not None and not self._state.adding:
                before = (
                    type(self)
                    .objects.select_for_update()
                    .filter(pk=self.pk)
                    .values("is_published", *CONTENT_FIELDS)
                    .first()
                )
            changed = before is None or any(before[name] != getattr(self, name) for name in CONTENT_FIELDS)
            if self.is_published and (self.published_at is None or changed or not before["is_published"]):
                self.published_at = timezone.now()
            # Until drafts: what is saved on a published page is live.
            if self.is_published:
                self.live_slug, self.live_title, self.live_body = self.slug, self.title, self.body
            else:
                self.live_slug, self.live_title, self.live_body = None, "", ""
            super().save(*args, **kwargs)
            signal = self._signal_for(before)
            if signal is not None:
                signal.send(sender=type(self), page=self, by=by)

    def _signal_for(self, before):
        was_live = bool(before and before["is_published"])
        if self.is_published and not was_live:
            return signals.page_published
        if was_live and not self.is_published:
            return signals.page_unpublished
        if was_live and any(before[name] != getattr(self, name) for name in CONTENT_FIELDS):
            return signals.page_changed
        return None

    def validate_content(self, *, fields=CONTENT_FIELDS):
        """Raise ``ValidationError`` (the form's messages) unless ``fields`` keep their rules. No queries."""
        self.clean_fields(exclude={f.name for f in self._meta.fields if f.name not in fields})

    def has_unsaved_changes(self):
        if self.pk is None:
            return True
        stored = type(self).objects.filter(pk=self.pk).values(*CONTENT_FIELDS).first()
        return stored is None or any(stored[name] != getattr(self, name) for name in CONTENT_FIELDS)

    def publish(self, *, by=None):
        """Make the page (with any unsaved edits) live. Returns False when there was nothing to do."""
        self.validate_content()  # before the page is marked live: a refused publish leaves it a draft
        if self.is_published and not self.has_unsaved_changes():
            return False
        self.is_published = True
        self.save(by=by)
        return True

    def unpublish(self, *, by=None):
        """Take the page off the site. Returns False when it was not published."""
        if not self.is_published:
            return False
        self.is_published = False
        self.published_at = None
        self.save(by=by)
        return True

    def delete(self, *args, by=None, **kwargs):
        with transaction.atomic():
            # Sent before the row goes, so receivers still see the page's id; the transaction binds both.
            if type(self).objects.filter(pk=self.pk, is_published=True).exists():
                signals.page_deleted.send(sender=type(self), page=self, by=by)
            return super().delete(*args, **kwargs)

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

    @property
    def status(self):
        return "published" if self.is_published else "draft"

    def site_url(self, base_url):
        """The page's address on the built site under ``base_url`` (``SITE_URL``)."""
        return f"{base_url.rstrip('/')}/{self.slug}/"


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
