"""The live site served by the web app (``SITE_SERVE``, DESIGN §5): from the destination's live release, whatever
the destination is. Good for development, previews, and behind any CDN."""

import datetime
import threading
import time

from django.http import Http404, HttpResponse, HttpResponseNotModified, HttpResponseRedirect
from django.utils.http import http_date, quote_etag

from .conf import get_config
from .destinations import DestinationError, ReleaseNotFound, get_destination

#: How long the live pointer is trusted before it is read again (seconds).
POINTER_TTL = 3.0
_cache = {"at": 0.0, "key": None, "live": None, "manifests": {}}
_lock = threading.Lock()


def _live_and_manifest(destination):
    """The live release and its manifest, the pointer cached for ``POINTER_TTL`` seconds per destination."""
    key = (type(destination).__name__, destination.describe())
    with _lock:
        fresh = _cache["key"] == key and time.monotonic() - _cache["at"] < POINTER_TTL
        live = _cache["live"] if fresh else None
    if not fresh:
        live = destination.live_release()
        with _lock:
            _cache.update(at=time.monotonic(), key=key, live=live)
    if live is None:
        return None, None
    manifests = _cache["manifests"]
    manifest = manifests.get((key, live.release))
    if manifest is None:
        manifest = destination.manifest(live.release)
        with _lock:
            if len(manifests) > 8:
                manifests.clear()
            manifests[(key, live.release)] = manifest
    return live, manifest


def serve_site(request, path):
    """Serve ``path`` of the live release at ``/site/``: index.html for folders, the release's own 404 page,
    ETag (the file's SHA-256) with 304s. 404 unless ``SITE_SERVE`` is on."""
    config = get_config()
    if not config.SITE_SERVE:
        raise Http404("The web app serves the built site only with SITE_SERVE on.")
    destination = get_destination()
    try:
        live, manifest = _live_and_manifest(destination)
    except (DestinationError, ReleaseNotFound) as exc:
        return HttpResponse(f"The live site cannot be read right now: {exc}", status=503, content_type="text/plain")
    if live is None:
        raise Http404("No release is live yet: publish a page, or run 'python manage.py buildstaticsite'.")
    files = manifest.files
    name = path if path and not path.endswith("/") else f"{path}index.html"
    if name not in files and f"{name}/index.html" in files:
        return HttpResponseRedirect(request.path + "/")
    entry = files.get(name)
    if entry is None:
        return _not_found(destination, live, files)
    etag = quote_etag(entry.sha256)
    if etag in request.headers.get("If-None-Match", ""):
        return HttpResponseNotModified(headers={"ETag": etag})
    response = HttpResponse(destination.open(live.release, name), content_type=entry.content_type)
    response["ETag"] = etag
    if manifest.created_at:  # when the release was sealed: no file of it changed since
        sealed = datetime.datetime.fromisoformat(manifest.created_at)
        response["Last-Modified"] = http_date(sealed.timestamp())
    response["Cache-Control"] = "no-cache" if entry.content_type.startswith("text/html") else "public, max-age=300"
    response["X-Publisher-Release"] = live.release
    return response


def _not_found(destination, live, files):
    if "404.html" in files:
        return HttpResponse(
            destination.open(live.release, "404.html"), status=404, content_type=files["404.html"].content_type
        )
    raise Http404("Not in the live release.")
