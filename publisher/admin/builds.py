"""The build history, the build page with its log, the buttons (rebuild, cancel, roll back), the live site, the
sweep's status.

Read-only: only ``publisher.builds`` writes builds. Each button is a POST with CSRF behind its own permission
(DESIGN §8): staff without it do not see it and get 403.
"""

import contextvars
from pathlib import Path

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models import Count, OuterRef, Subquery
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from .. import builds, status
from ..conf import get_config
from ..launchers.base import redact
from ..models import ACTIVE_STATES, OPEN_STATES, Build, BuildRequest, BuildState, SweepStatus

#: Lines of a local build's log shown on its page, and at most how many bytes are read from its end for them.
LOG_LINES = 200
LOG_TAIL_BYTES = 256 * 1024
#: "now" for the rows of one page: the database's clock, read once per view.
_now = contextvars.ContextVar("publisher_admin_now", default=None)
#: Button names (the forms' submit buttons), for people and for browser tests.
REBUILD, CANCEL, ROLLBACK = "_rebuild", "_cancel", "_rollback"

#: The build page: what happened first, then the launch failure, the cancel, the release, the internals.
FIELDSETS = [
    (
        None,
        {
            "fields": [
                "state_badge",
                "reasons",
                "where_it_ran",
                ("created_at", "launched_at", "started_at", "finished_at"),
                "duration",
                "pages",
                "attempt",
                "error",
            ]
        },
    ),
    (
        "Launch failure",
        {
            "fields": ["error_status", "error_id", "error_request_id", "needs_operator", "next_attempt_at"],
            "description": "The last launch failure as the platform answered it.",
        },
    ),
    ("Cancel", {"fields": ["cancelled_by", "stop_requested_at", "stopped_at", "stop_error"]}),
    ("Release", {"fields": ["release", "went_to_details"]}),
    (
        "Details",
        {
            "classes": ["collapse"],
            "fields": [
                "launcher",
                "manual",
                "handle",
                "heartbeat_at",
                "progress_at",
                "retry_of",
                "alerted_at",
                "failure_reported_at",
                "stall_reported_at",
            ],
        },
    ),
]


def _names(group):
    return group if isinstance(group, tuple) else (group,)


class RequestInline(admin.TabularInline):
    model = BuildRequest
    fk_name = "build"
    fields = ["created_at", "reason", "requested_by", "page", "retry_of"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Build)
class BuildAdmin(admin.ModelAdmin):
    """Build history and build pages; the buttons ``Rebuild site now``, ``Cancel build``, ``Roll back to this
    release``; cancel and roll back are also list actions."""

    list_display = [
        "number",
        "state_badge",
        "reasons",
        "where_it_ran",
        "times",
        "release_column",
        "error_words",
    ]
    list_display_links = ["number"]
    list_filter = ["state", "manual"]
    list_per_page = 50
    inlines = [RequestInline]
    actions = ["cancel_selected", "roll_back_to_selected"]
    change_list_template = "admin/publisher/build/change_list.html"
    change_form_template = "admin/publisher/build/change_form.html"
    fieldsets = FIELDSETS
    readonly_fields = [name for _, options in FIELDSETS for group in options["fields"] for name in _names(group)]

    def get_fieldsets(self, request, obj=None):
        """The launch failure, cancel and release groups only when the build has something to say in them."""
        if obj is None:
            return self.fieldsets
        shown = {
            "Launch failure": bool(
                obj.error_status or obj.error_id or obj.error_request_id or obj.needs_operator or obj.attempt > 1
            ),
            "Cancel": bool(obj.state == BuildState.CANCELLED or obj.cancelled_by or obj.stop_requested_at),
            "Release": bool(obj.release or obj.published),
        }
        return [(name, options) for name, options in self.fieldsets if shown.get(name, True)]

    # --- The rows ------------------------------------------------------------------------------------------------

    def get_queryset(self, request):
        first = BuildRequest.objects.filter(build=OuterRef("pk")).order_by("pk")
        return (
            super()
            .get_queryset(request)
            .defer("launch_token")
            .annotate(
                request_count=Count("requests", distinct=True),
                first_reason=Subquery(first.values("reason")[:1]),
                first_by=Subquery(first.values("requested_by__username")[:1]),
            )
        )

    @admin.display(description="build", ordering="pk")
    def number(self, build):
        return f"#{build.pk}"

    @admin.display(description="state, pages, duration", ordering="state")
    def state_badge(self, build):
        """The state in a colour, then its attempt, pages and duration in small lines: one narrow column, so the
        list reads on a laptop screen beside the admin's menu."""
        lines = [f"attempt {build.attempt}"] if build.attempt > 1 else []
        lines += [text for text in (self.pages(build), self.duration(build)) if text != "—"]
        return format_html(
            '<span class="publisher-state publisher-state--{}">{}</span>{}',
            build.state,
            build.get_state_display().lower(),
            format_html_join("", '<span class="publisher-small">{}</span>', ((line,) for line in lines)),
        )

    @admin.display(description="reasons")
    def reasons(self, build):
        """The first request's reason, who asked, and how many requests the build covers."""
        reason = getattr(build, "first_reason", None)
        count = getattr(build, "request_count", 0)
        who = getattr(build, "first_by", None)
        if reason is None:
            return "—"
        more = f" (+{count - 1} more request{'s' if count > 2 else ''})" if count > 1 else ""
        by = format_html('<span class="publisher-small">by {}</span>', who) if who else ""
        return format_html("{}{}{}", _shorten(reason, 80), more, by)

    @admin.display(description="where it ran")
    def where_it_ran(self, build):
        return status.where(build) or "—"

    @admin.display(description="requested / started / finished", ordering="created_at")
    def times(self, build):
        rows = [("requested", build.created_at), ("started", build.started_at), ("finished", build.finished_at)]
        return format_html_join(
            "",
            '<span class="publisher-small">{} {}</span>',
            ((label, f"{moment:%d %b %H:%M:%S}") for label, moment in rows if moment),
        )

    @admin.display(description="duration")
    def duration(self, build):
        if build.started_at is None:
            return "—"
        if build.finished_at is not None:
            return status.words(build.finished_at - build.started_at)
        if build.state not in ACTIVE_STATES:
            return "—"
        at = _now.get() or builds.now()
        return f"{status.words(at - build.started_at)} so far"

    @admin.display(description="pages")
    def pages(self, build):
        if build.pages_total is None:
            return f"{build.pages_done:,}" if build.pages_done else "—"
        done = build.pages_done or 0
        percent = min(100, done * 100 // build.pages_total) if build.pages_total else 100
        return f"{done:,} / {build.pages_total:,} ({percent} %)"

    @admin.display(description="error")
    def error_words(self, build):
        if not build.error:
            return "—"
        return format_html('<span title="{}">{}</span>', build.error, _shorten(build.error, 100))

    @admin.display(description="release", ordering="release")
    def release_column(self, build):
        """The release's name and, below it, what went where in a few words."""
        if not build.release:
            return "—"
        published = build.published or {}
        went = ""
        if published:
            kept = "" if published.get("went_live", True) else "; kept, a newer release was live"
            stored, reused = _transfer_words(published)
            went = format_html(
                '<span class="publisher-small">{} {}, {} {} ({}){}</span>',
                f"{published.get('uploaded', 0):,}",
                stored,
                f"{published.get('copied', 0):,}",
                reused,
                filesizeformat(published.get("bytes_uploaded") or 0),
                kept,
            )
        return format_html("<code>{}</code>{}", build.release, went)

    @admin.display(description="where the release went")
    def went_to_details(self, build):
        """Destination, files uploaded / copied / deleted, bytes, releases pruned, the URL."""
        published = build.published or {}
        if not published:
            return "—"
        stored, reused = _transfer_words(published)
        parts = [
            f"{published.get('uploaded', 0):,} {stored}",
            f"{published.get('copied', 0):,} {reused}",
        ]
        if "deleted" in published:
            parts.append(f"{_count(published['deleted']):,} deleted")
        parts.append(filesizeformat(published.get("bytes_uploaded") or 0))
        line = f"{', '.join(parts)} to {published.get('destination') or '?'}"
        if not published.get("went_live", True):
            line += "; kept, a newer release was live"
        if published.get("recycled"):
            line += f"; built in the folders of {published['recycled']}, which it replaces"
        pruned = published.get("pruned")
        if pruned:
            names = pruned if isinstance(pruned, list) else []
            line += f"; pruned {_count(pruned):,} old release{'s' if _count(pruned) != 1 else ''}"
            line += f" ({', '.join(map(str, names[:5]))}{', …' if len(names) > 5 else ''})" if names else ""
        url = published.get("url") or (get_config().SITE_URL if published.get("went_live", True) else "")
        if url:
            return format_html('{} — <a href="{}" target="_blank" rel="noopener">{}</a>', line, url, url)
        return line

    # --- Permissions ---------------------------------------------------------------------------------------------

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_rebuild_permission(self, request):
        return request.user.has_perm("publisher.request_build")

    def has_cancel_permission(self, request):
        return request.user.has_perm("publisher.cancel_build")

    def has_rollback_permission(self, request):
        return request.user.has_perm("publisher.rollback_site")

    # --- The list and the page -----------------------------------------------------------------------------------

    def changelist_view(self, request, extra_context=None):
        token = _now.set(builds.now())
        try:
            context = {"can_rebuild": self.has_rebuild_permission(request), **(extra_context or {})}
            return super().changelist_view(request, context)
        finally:
            _now.reset(token)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        token = _now.set(builds.now())
        try:
            build = self.get_object(request, object_id)
            context = dict(extra_context or {})
            if build is not None and self.has_view_permission(request, build):
                context.update(self._page_context(request, build))
            return super().change_view(request, object_id, form_url, context)
        finally:
            _now.reset(token)

    def _page_context(self, request, build):
        log = log_for(build)
        return {
            "build": build,
            "build_is_open": build.state in OPEN_STATES,
            "log": log,
            "log_url": reverse("admin:publisher_build_log", args=[build.pk]),
            "can_rebuild": self.has_rebuild_permission(request),
            "can_cancel": self.has_cancel_permission(request) and build.state in OPEN_STATES,
            "can_roll_back": self.has_rollback_permission(request) and rollback_possible(build),
            "button_names": {"rebuild": REBUILD, "cancel": CANCEL, "rollback": ROLLBACK},
        }

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("rebuild/", wrap(self.rebuild_view), name="publisher_build_rebuild"),
            path("<path:object_id>/cancel/", wrap(self.cancel_view), name="publisher_build_cancel"),
            path("<path:object_id>/rollback/", wrap(self.rollback_view), name="publisher_build_rollback"),
            path("<path:object_id>/log/", wrap(never_cache(self.log_view)), name="publisher_build_log"),
            *super().get_urls(),
        ]

    # --- The buttons ---------------------------------------------------------------------------------------------

    @property
    def rebuild_view(self):
        return require_POST(self._rebuild_view)

    def _rebuild_view(self, request):
        """ "Rebuild site now": a request for a build of the whole site, said in the Outcome's words."""
        if not self.has_rebuild_permission(request):
            raise PermissionDenied("You may not rebuild the site.")
        outcome = builds.request_build(f"rebuilt by {request.user.get_username()}", by=request.user)
        self.message_user(request, str(outcome), messages.SUCCESS if outcome.ok else messages.WARNING)
        target = reverse("admin:publisher_build_changelist")
        if outcome.build_id:
            target = reverse("admin:publisher_build_change", args=[outcome.build_id])
        return HttpResponseRedirect(target)

    def cancel_view(self, request, object_id):
        """ "Cancel build": GET asks for confirmation, POST cancels (``builds.cancel`` returns at once)."""
        if not self.has_cancel_permission(request):
            raise PermissionDenied("You may not cancel builds.")
        build = self._build_or_404(request, object_id)
        if request.method == "POST":
            outcome = builds.cancel(build.pk, by=request.user.get_username())
            self.message_user(request, str(outcome), messages.SUCCESS if outcome.ok else messages.WARNING)
            return HttpResponseRedirect(reverse("admin:publisher_build_change", args=[build.pk]))
        return self._confirmation(
            request,
            build,
            "admin/publisher/build/cancel_confirmation.html",
            title=f"Cancel build #{build.pk}?",
            possible=build.state in OPEN_STATES,
        )

    def rollback_view(self, request, object_id):
        """ "Roll back to this release": GET asks for confirmation, POST makes the build's release live."""
        if not self.has_rollback_permission(request):
            raise PermissionDenied("You may not roll the site back.")
        build = self._build_or_404(request, object_id)
        if request.method == "POST":
            level, message = roll_back(request, Build.objects.filter(pk=build.pk))
            self.message_user(request, message, level)
            return HttpResponseRedirect(reverse("admin:publisher_build_change", args=[build.pk]))
        return self._confirmation(
            request,
            build,
            "admin/publisher/build/rollback_confirmation.html",
            title=f"Roll the site back to build #{build.pk}'s release?",
            possible=rollback_possible(build),
        )

    def log_view(self, request, object_id):
        """The tail of the build's log (JSON ``text``), for the page to refresh while the build runs."""
        build = self._build_or_404(request, object_id)
        log = log_for(build)
        body = {"build": build.pk, "state": build.state, "open": build.state in OPEN_STATES, **log}
        return JsonResponse(body)

    def _build_or_404(self, request, object_id):
        build = self.get_object(request, object_id)
        if build is None:
            raise Http404(f"There is no build {object_id!r}.")
        if not self.has_view_permission(request, build):
            raise PermissionDenied("You may not view builds.")
        return build

    def _confirmation(self, request, build, template, *, title, possible):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "build": build,
            "possible": possible,
            "button_names": {"cancel": CANCEL, "rollback": ROLLBACK},
            "build_url": reverse("admin:publisher_build_change", args=[build.pk]),
        }
        return TemplateResponse(request, template, context)

    # --- The list actions ----------------------------------------------------------------------------------------

    @admin.action(description="Roll the site back to this build's release", permissions=["rollback"])
    def roll_back_to_selected(self, request, queryset):
        level, message = roll_back(request, queryset)
        self.message_user(request, message, level)

    @admin.action(description="Cancel selected builds", permissions=["cancel"])
    def cancel_selected(self, request, queryset):
        for pk in queryset.filter(state__in=(BuildState.QUEUED, *ACTIVE_STATES)).values_list("pk", flat=True):
            outcome = builds.cancel(pk, by=request.user.get_username())
            self.message_user(request, str(outcome), messages.SUCCESS if outcome.ok else messages.WARNING)


def _shorten(text, limit):
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _count(value):
    """A count stored as a number or as the list of what was counted."""
    return len(value) if isinstance(value, list | tuple) else int(value or 0)


# --- The log -------------------------------------------------------------------------------------------------------


def log_for(build):
    """Where a build's output is: ``{"kind": "file", "path", "exists", "text"}`` for builds on this machine (the last
    ``LOG_LINES`` lines, the launch token blanked out), or ``{"kind": "heroku", "dyno", "command"}``."""
    handle = build.handle if isinstance(build.handle, dict) else {}
    dyno = handle.get("dyno_name") or handle.get("dyno")
    if dyno or build.launcher == "heroku":
        dyno = dyno or "run"
        app = handle.get("app") or _heroku_app() or "APP"
        return {"kind": "heroku", "dyno": dyno, "command": f"heroku logs --app {app} --dyno {dyno} --tail"}
    log_path = log_file(build.pk)
    token = Build.objects.filter(pk=build.pk).values_list("launch_token", flat=True).first()
    try:
        with log_path.open("rb") as file:
            file.seek(0, 2)
            size = file.tell()
            file.seek(max(0, size - LOG_TAIL_BYTES))
            data = file.read()
    except FileNotFoundError:
        return {"kind": "file", "path": str(log_path), "exists": False, "text": ""}
    except OSError as exc:
        return {"kind": "file", "path": str(log_path), "exists": False, "text": f"The log cannot be read: {exc}"}
    lines = data.decode(errors="replace").splitlines()
    if size > LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line read is probably cut
    text = "\n".join(lines[-LOG_LINES:])
    return {"kind": "file", "path": str(log_path), "exists": True, "text": redact(text, [token])}


def _heroku_app():
    """The app of the configured Heroku launcher, for a build whose handle does not name it (one run by hand in a
    dyno); ``None`` when no Heroku launcher is configured."""
    from ..launchers import get_launcher

    try:
        return getattr(get_launcher("heroku"), "app_name", None)
    except ImproperlyConfigured:
        return None


def log_file(build_id):
    """``LOG_DIR/builds/<id>.log``, relative to the project (where the local launcher writes it)."""
    log_dir = Path(get_config().build_log_dir)
    if not log_dir.is_absolute():
        log_dir = Path(settings.BASE_DIR) / log_dir
    return log_dir / f"{int(build_id)}.log"


# --- The live site and rollback ------------------------------------------------------------------------------------


def rollback_possible(build):
    """The build's release is sealed at the destination and is not the live one."""
    from ..destinations import DestinationError, get_destination

    if not build.release:
        return False
    try:
        destination = get_destination()
        live = destination.live_release()
        return build.release in destination.releases() and (live is None or live.release != build.release)
    except (DestinationError, ImproperlyConfigured):
        return False


def live_site_summary():
    """One sentence: which release is live, from which build, since when, where, and at which URL."""
    from ..destinations import DestinationError, get_destination

    try:
        destination = get_destination()
        live = destination.live_release()
    except (DestinationError, ImproperlyConfigured) as exc:
        return f"The live site cannot be read right now: {exc}"
    if live is None:
        return "No release is live yet."
    since = f" since {live.switched_at}" if live.switched_at else ""
    build = f" (build #{live.build})" if live.build else ""
    return f"Live: release {live.release}{build}{since}, on {destination.describe()}, at {get_config().SITE_URL}"


def roll_back(request, queryset):
    """Make the release of the one selected build live again (one pointer write, DESIGN §5)."""
    from ..destinations import DestinationError, get_destination

    chosen = list(queryset.exclude(release="").values_list("pk", "release")[:2])
    if len(chosen) != 1:
        return messages.WARNING, "Select exactly one build that went live to roll back to its release."
    pk, release = chosen[0]
    try:
        live = get_destination().rollback(release)
    except DestinationError as exc:
        return messages.ERROR, f"Could not roll back to build #{pk}'s release {release}: {exc}"
    finally:
        status.forget_live_site()
    return messages.SUCCESS, f"The site is back on build #{pk}'s release {live.release}."


@admin.register(SweepStatus)
class SweepStatusAdmin(admin.ModelAdmin):
    list_display = ["__str__", "took_ms", "summary"]
    readonly_fields = ["ran_at", "took_ms", "summary", "passes", "pruned_at"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _transfer_words(published):
    """How a destination stored a release's files, in its own words: S3 uploads and copies server-side; a folder
    (local) writes files and hard-links the unchanged ones from the live release."""
    if str(published.get("destination") or "").startswith("s3://"):
        return "uploaded", "copied"
    return "written", "linked"
