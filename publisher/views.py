from pathlib import Path

from django.conf import settings
from django.http import Http404, HttpResponseRedirect
from django.views.static import serve

from .conf import get_config


def serve_site(request, path):
    """Serve the live release (``SITE_ROOT/current``) at ``/site/`` for development; 404 unless ``DEBUG``."""
    if not settings.DEBUG:
        raise Http404("The built site is served by the dev server only with DEBUG on.")
    root = get_config().SITE_ROOT / "current"
    if not root.exists():
        raise Http404("No release is live yet: run 'python manage.py buildstaticsite'.")
    root = root.resolve()
    target = (root / path).resolve()
    if root not in target.parents and target != root:
        raise Http404("Outside the site.")
    if target.is_dir():
        if path and not path.endswith("/"):
            return HttpResponseRedirect(request.path + "/")
        path = str(Path(path) / "index.html") if path else "index.html"
    return serve(request, path, document_root=str(root))
