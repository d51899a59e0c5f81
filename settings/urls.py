from django.contrib import admin
from django.urls import path

from publisher.views import serve_site

admin.site.site_header = "Publisher"
admin.site.site_title = "Publisher"

urlpatterns = [
    path("admin/", admin.site.urls),
    # The built site, for development only: the view answers 404 unless DEBUG is on.
    path("site/", serve_site, {"path": ""}),
    path("site/<path:path>", serve_site),
]
