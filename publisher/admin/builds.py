"""The build history, the live site, the sweep's status."""

from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured
from django.template.defaultfilters import filesizeformat

from .. import builds
from ..conf import get_config
from ..models import ACTIVE_STATES, Build, BuildRequest, BuildState, SweepStatus


class RequestInline(admin.TabularInline):
    model = BuildRequest
    fk_name = "build"
    fields = ["created_at", "reason", "requested_by", "retry_of"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Build)
class BuildAdmin(admin.ModelAdmin):
    """Build history (read-only: only ``publisher.builds`` writes builds); cancel is the one action."""

    list_display = [
        "__str__",
        "state",
        "attempt",
        "created_at",
        "started_at",
        "finished_at",
        "progress",
        "went_to",
        "error_short",
    ]
    list_filter = ["state", "manual"]
    readonly_fields = [f.name for f in Build._meta.fields if f.name != "launch_token"]
    exclude = ["launch_token"]
    inlines = [RequestInline]
    actions = ["cancel_selected", "roll_back_to_selected"]

    @admin.display(description="published")
    def went_to(self, build):
        """Where the release went, in a few words: "12 uploaded, 3,040 copied (41 KB) to s3://bucket/site/"."""
        published = build.published or {}
        if not published:
            return "—"
        size = filesizeformat(published.get("bytes_uploaded") or 0)
        where = published.get("destination") or "?"
        kept = "" if published.get("went_live", True) else "; kept, a newer release was live"
        return (
            f"{build.release}: {published.get('uploaded', 0):,} uploaded, {published.get('copied', 0):,} copied "
            f"({size}) to {where}{kept}"
        )

    def changelist_view(self, request, extra_context=None):
        """The build history starts with where the live site is."""
        if request.method == "GET":
            self.message_user(request, live_site_summary(), messages.INFO)
        return super().changelist_view(request, extra_context)

    @admin.display(description="pages")
    def progress(self, build):
        if build.pages_total is None:
            return "—"
        return f"{build.pages_done or 0} / {build.pages_total}"

    @admin.display(description="error")
    def error_short(self, build):
        return (build.error[:80] + "…") if len(build.error) > 80 else build.error

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_cancel_permission(self, request):
        return request.user.has_perm("publisher.publish_page")

    def has_rollback_permission(self, request):
        return request.user.has_perm("publisher.rollback_site")

    @admin.action(description="Roll the site back to this build's release", permissions=["rollback"])
    def roll_back_to_selected(self, request, queryset):
        level, message = roll_back(request, queryset)
        self.message_user(request, message, level)

    @admin.action(description="Cancel selected builds", permissions=["cancel"])
    def cancel_selected(self, request, queryset):
        for pk in queryset.filter(state__in=(BuildState.QUEUED, *ACTIVE_STATES)).values_list("pk", flat=True):
            outcome = builds.cancel(pk, by=request.user.get_username())
            self.message_user(request, str(outcome), messages.SUCCESS if outcome.ok else messages.WARNING)


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
    return messages.SUCCESS, f"The site is back on build #{pk}'s release {live.release}."


@admin.register(SweepStatus)
class SweepStatusAdmin(admin.ModelAdmin):
    list_display = ["__str__", "took_ms", "summary"]
    readonly_fields = ["ran_at", "took_ms", "summary", "passes", "pruned_at"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
