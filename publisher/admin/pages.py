"""The page admin: drafts, publishing, and what the build system did with a publish."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils.html import format_html
from django.utils.translation import ngettext

from .. import builds
from ..conf import get_config
from ..models import Page

PUBLISH_BUTTON = "_saveandpublish"


@admin.register(Page)
class PageAdmin(admin.ModelAdmin):
    list_display = ["title", "slug", "is_published", "updated_at", "live_link"]
    list_filter = ["is_published", "updated_at"]
    search_fields = ["title", "slug", "body"]
    readonly_fields = ["is_published", "published_at", "created_at", "updated_at", "live_link"]
    fields = ["title", "slug", "body", "is_published", "published_at", "live_link", "created_at", "updated_at"]
    actions = ["publish_selected", "unpublish_selected"]

    def has_publish_permission(self, request):
        return request.user.has_perm("publisher.publish_page")

    @admin.display(description="On the site")
    def live_link(self, page):
        url = self.view_on_site(page)
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url) if url else "—"

    def view_on_site(self, page):
        """The page under ``SITE_URL`` while it is live; nothing for drafts."""
        return page.site_url(get_config().SITE_URL) if page.pk and page.is_published else None

    # --- What the build system did, in words, after the content committed ----------------------------------------

    def changeform_view(self, request, *args, **kwargs):
        return self._with_outcomes(request, super().changeform_view, *args, **kwargs)

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

    # --- Saving: "Save and publish", and the signals carry who acted -------------------------------------------

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["show_save_and_publish"] = self.has_publish_permission(request)
        context["page_is_live"] = bool(obj and obj.is_published)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(self, request, obj, form, change):
        if PUBLISH_BUTTON in request.POST:
            if not self.has_publish_permission(request):
                raise PermissionDenied("You may not publish pages.")
            obj.publish(by=request.user)
        else:
            obj.save(by=request.user)

    def delete_model(self, request, obj):
        obj.delete(by=request.user)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for page in queryset:
                page.delete(by=request.user)

    # --- Bulk actions --------------------------------------------------------------------------------------------

    @admin.action(description="Publish selected pages", permissions=["publish"])
    def publish_selected(self, request, queryset):
        self._bulk(request, queryset, "publish", "%d page published.", "%d pages published.")

    @admin.action(description="Unpublish selected pages", permissions=["publish"])
    def unpublish_selected(self, request, queryset):
        self._bulk(request, queryset, "unpublish", "%d page unpublished.", "%d pages unpublished.")

    def _bulk(self, request, queryset, method, singular, plural):
        with transaction.atomic():
            changed = sum(1 for page in queryset.select_for_update() if getattr(page, method)(by=request.user))
        if changed:
            self.message_user(request, ngettext(singular, plural, changed) % changed, messages.SUCCESS)
        else:
            self.message_user(request, "Nothing to do: the selected pages were already in that state.", messages.INFO)
