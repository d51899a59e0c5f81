"""The page admin: drafts, publishing, and where each page's last publish stands.

Editors save drafts; ``publisher.publish_page`` guards every change to what is live (Publish, Unpublish, the bulk
actions, deleting a live page). The buttons a user may not press are not shown, and posting them answers 403.
"""

import difflib

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

from .. import builds
from ..conf import get_config
from ..models import CONTENT_FIELDS, LIVE_FIELDS, LiveState, Page
from ..pagestatus import publish_status, publish_statuses

PUBLISH_BUTTON = "_saveandpublish"  # saves the draft and makes it live
UNPUBLISH_BUTTON = "_unpublish"  # saves the draft and takes the live version down
SAVE_DRAFT_BUTTON = "_continue"  # Django's "save and continue editing": the editor stays on the form

#: Lines of a diff shown in the form; the rest is counted.
DIFF_MAX_LINES = 400


def changes_from_live(page):
    """Unified diff lines of the draft against the live version (title, slug, body); [] when they agree."""
    lines = []
    for field in CONTENT_FIELDS:
        live, draft = getattr(page, LIVE_FIELDS[field]) or "", getattr(page, field) or ""
        if live != draft:
            lines.extend(
                difflib.unified_diff(
                    live.splitlines(), draft.splitlines(), f"{field} (live)", f"{field} (draft)", lineterm="", n=2
                )
            )
    return lines


class LiveStateFilter(admin.SimpleListFilter):
    title = "live state"
    parameter_name = "live"

    def lookups(self, request, model_admin):
        return LiveState.choices

    def queryset(self, request, queryset):
        return queryset.in_live_state(self.value()) if self.value() in LiveState.values else queryset


class PageChangeList(ChangeList):
    """Bodies are not loaded for the list; the statuses of the listed pages are read together (two queries)."""

    def get_queryset(self, request, exclude_parameters=None):
        return super().get_queryset(request, exclude_parameters).defer("body", "live_body")

    def get_results(self, request):
        super().get_results(request)
        statuses = publish_statuses(self.result_list)
        for page in self.result_list:
            page.publish_status = statuses[page.pk]


class PageForm(forms.ModelForm):
    publishing = False  # set by the admin when Publish was pressed: the draft must be able to go live

    def _post_clean(self):
        super()._post_clean()
        if self.publishing and "slug" not in self.errors:
            try:
                self.instance.validate_can_go_live()
            except ValidationError as exc:
                self._update_errors(exc)


@admin.register(Page)
class PageAdmin(admin.ModelAdmin):
    form = PageForm
    list_display = ["title", "slug", "live_state", "last_publish", "updated_at", "live_link"]
    list_filter = [LiveStateFilter, "updated_at"]
    search_fields = ["title", "slug", "body"]
    readonly_fields = ["live_state", "changes", "live_changed_at", "live_link", "created_at", "updated_at"]
    fields = ["title", "slug", "body", *readonly_fields]
    actions = ["publish_selected", "unpublish_selected", "delete_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).with_live_state()

    def get_changelist(self, request, **kwargs):
        return PageChangeList

    def has_publish_permission(self, request):
        return request.user.has_perm("publisher.publish_page")

    def has_delete_permission(self, request, obj=None):
        """Deleting a live page takes it off the site: that needs the publish permission too."""
        if obj is not None and obj.is_published and not self.has_publish_permission(request):
            return False
        return super().has_delete_permission(request, obj)

    # --- Columns and readonly fields -----------------------------------------------------------------------------

    @admin.display(description="live state", ordering="is_published")
    def live_state(self, page):
        stored = getattr(page, "stored_live_state", None)  # from the list's query: no body loaded
        return LiveState(stored).label if stored else page.live_state.label

    @admin.display(description="last publish")
    def last_publish(self, page):
        status = getattr(page, "publish_status", None) or publish_status(page)
        return format_html('<span class="page-status page-status-{}">{}</span>', status.kind.value, status)

    @admin.display(description="changes not yet live")
    def changes(self, page):
        if not page.pk or not page.is_published:
            return "Nothing is live: publishing makes the whole draft live."
        lines = changes_from_live(page)
        if not lines:
            return "None: the draft is what is live."
        shown, rest = lines[:DIFF_MAX_LINES], len(lines) - DIFF_MAX_LINES
        kinds = ((diff_class(line), line) for line in shown)
        more = format_html("\n… {} more lines", f"{rest:,}") if rest > 0 else ""
        return format_html(
            '<pre class="page-diff">{}{}</pre>', format_html_join("\n", '<span class="{}">{}</span>', kinds), more
        )

    @admin.display(description="live version changed")
    def live_changed_at(self, page):
        """``published_at``: when the page was last published, its changes published, or it was taken down."""
        return date_format(timezone.localtime(page.published_at), "DATETIME_FORMAT") if page.published_at else "—"

    @admin.display(description="on the site")
    def live_link(self, page):
        url = self.view_on_site(page)
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url) if url else "—"

    def view_on_site(self, page):
        """The live version's address under ``SITE_URL``; nothing while nothing is live."""
        return page.site_url(get_config().SITE_URL) if page.pk and page.is_published else None

    # --- What the build system did, in words, after the content committed ----------------------------------------

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST" and self._pressed(request) in (PUBLISH_BUTTON, UNPUBLISH_BUTTON):
            if not self.has_publish_permission(request):
                raise PermissionDenied("Publishing and unpublishing pages needs the publish permission.")
        return self._with_outcomes(request, super().changeform_view, object_id, form_url, extra_context)

    def changelist_view(self, request, *args, **kwargs):
        return self._with_outcomes(request, super().changelist_view, *args, **kwargs)

    def delete_view(self, request, *args, **kwargs):
        return self._with_outcomes(request, super().delete_view, *args, **kwargs)

    def _with_outcomes(self, request, view, *args, **kwargs):
        with builds.collect_outcomes() as outcomes:
            response = view(request, *args, **kwargs)
        for outcome in outcomes:
            self.message_user(request, str(outcome), messages.INFO if outcome.ok else messages.WARNING)
        return response

    # --- The form: Save draft, Publish / Publish changes, Unpublish ---------------------------------------------

    @staticmethod
    def _pressed(request):
        return next((name for name in (PUBLISH_BUTTON, UNPUBLISH_BUTTON) if name in request.POST), None)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if request.method == "POST" and self._pressed(request) == PUBLISH_BUTTON:
            form = type(form.__name__, (form,), {"publishing": True})
        return form

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        may_publish = self.has_publish_permission(request)
        is_live = bool(obj and obj.pk and obj.is_published)
        context.update(
            show_publish=may_publish,
            show_unpublish=may_publish and is_live,
            page_is_live=is_live,
            may_publish=may_publish,
            live_state=obj.live_state if obj and obj.pk else None,
            page_status=publish_status(obj) if obj and obj.pk else None,
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(self, request, obj, form, change):
        pressed = self._pressed(request)
        if pressed == PUBLISH_BUTTON:
            if obj.publish(by=request.user):
                obj.said = (messages.SUCCESS, f"Published “{obj}”.")
            else:
                obj.said = (messages.INFO, f"Nothing to publish: the live version of “{obj}” is this draft already.")
        elif pressed == UNPUBLISH_BUTTON:
            obj.save()
            if obj.unpublish(by=request.user):
                obj.said = (messages.SUCCESS, f"Unpublished “{obj}”; its draft is kept.")
            else:
                obj.said = (messages.INFO, f"Nothing to unpublish: “{obj}” was not live.")
        else:
            obj.save()
            if obj.is_published:
                then = "until you publish" if self.has_publish_permission(request) else "until an editor publishes"
                obj.said = (messages.SUCCESS, f"Saved the draft of “{obj}”. The site shows the live version {then}.")
            else:
                obj.said = (messages.SUCCESS, f"Saved the draft of “{obj}”. It is not on the site.")

    def response_add(self, request, obj, post_url_continue=None):
        return self._stay_on_the_form(request, obj) or super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        return self._stay_on_the_form(request, obj) or super().response_change(request, obj)

    def _stay_on_the_form(self, request, obj):
        """After Save draft, Publish or Unpublish: say what happened and show the form again, with its status."""
        said = getattr(obj, "said", None)
        if said is None or "_save" in request.POST or "_addanother" in request.POST or "_popup" in request.POST:
            return None
        self.message_user(request, said[1], said[0])
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
        preserved = {"preserved_filters": self.get_preserved_filters(request), "opts": self.opts}
        return HttpResponseRedirect(add_preserved_filters(preserved, url))

    # --- Deleting ------------------------------------------------------------------------------------------------

    def delete_model(self, request, obj):
        obj.delete(by=request.user)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for page in queryset:
                page.delete(by=request.user)

    @admin.action(description="Delete selected pages", permissions=["delete"])
    def delete_selected(self, request, queryset):
        """Django's bulk delete, refused with the live pages' names for a user who may not publish; the confirmation
        names the live pages that leave the site."""
        live = list(queryset.filter(is_published=True).order_by("title").values_list("title", flat=True)[:11])
        if live and not self.has_publish_permission(request):
            names = ", ".join(f"“{title}”" for title in live[:10]) + (", …" if len(live) > 10 else "")
            self.message_user(
                request,
                f"Nothing was deleted: deleting a live page takes it off the site, which needs the publish "
                f"permission. Live: {names}.",
                messages.ERROR,
            )
            return None
        response = django_delete_selected(self, request, queryset)
        if isinstance(response, TemplateResponse):  # the confirmation page, not rendered yet
            response.context_data["live_pages"] = live[:10] + (["…"] if len(live) > 10 else [])
        return response

    # --- Bulk actions (one build request for the batch) ---------------------------------------------------------

    @admin.action(description="Publish selected pages", permissions=["publish"])
    def publish_selected(self, request, queryset):
        self._bulk(request, queryset, "publish", "%d page published.", "%d pages published.")

    @admin.action(description="Unpublish selected pages", permissions=["publish"])
    def unpublish_selected(self, request, queryset):
        self._bulk(request, queryset, "unpublish", "%d page unpublished.", "%d pages unpublished.")

    def _bulk(self, request, queryset, method, singular, plural):
        pks = list(queryset.values_list("pk", flat=True))
        refused = []
        with transaction.atomic():
            changed = 0
            for page in Page.objects.select_for_update().filter(pk__in=pks).order_by("pk"):
                try:
                    changed += getattr(page, method)(by=request.user)
                except ValidationError as exc:
                    refused.append(f"“{page}”: {' '.join(exc.messages)}")
        if changed:
            self.message_user(request, ngettext(singular, plural, changed) % changed, messages.SUCCESS)
        elif not refused:
            self.message_user(request, "Nothing to do: the selected pages were already in that state.", messages.INFO)
        for why in refused:
            self.message_user(request, f"Not published: {why}", messages.ERROR)


def diff_class(line):
    if line.startswith(("+++", "---")):
        return "diff-file"
    return {"+": "diff-add", "-": "diff-del", "@": "diff-hunk"}.get(line[:1], "diff-same")
