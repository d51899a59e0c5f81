"""Is my change live? Where each page's last publish stands, in one sentence for editors.

The rule (DESIGN §2): a page's last publish is the moment its live version last changed (``Page.published_at``:
published, changes published, or taken down; the database's clock). It is on the site once a build that *started*
at or after that moment (``Build.started_at``, its claim, after which it reads content) has succeeded and its
release went live. Until then it waits for the build that will read it, is being built, or a build failed.

Builds run one at a time, so their start times rise with their ids. ``publish_statuses`` answers for a whole page
list in two queries: the successful builds that went live since the oldest publish in the list, and the builds
that matter to pages none of those covers (the open ones, and those that ended badly since).

An operator may roll the site back to an older release (``rollbacksite``, the admin's rollback). Then what is on the
site is that release's build's reading of the content: a publish made after that build started is off the site
again, although a later build carried it, until the next build goes live. The live pointer (``status.live_site``,
cached a few seconds) names the live release's build; when it is one of ours with that release, a change is on the
site only if that build started at or after it (a third query when that build is older than the oldest publish in
the list). When the pointer cannot be read, or names a release no build here recorded, the builds alone decide.
"""

import bisect
import enum
from dataclasses import dataclass

from django.db.models import Q
from django.utils import timezone

from .models import OPEN_STATES, Build, BuildState

S = BuildState


class StatusKind(enum.Enum):
    DRAFT = "draft"  # never published: nothing of it is on the site
    WAITING = "waiting"  # the build that will read it has not started yet
    BUILDING = "building"  # a running build has read it
    LIVE = "live"  # a build that read it went live
    TAKEN_DOWN = "taken_down"  # it was unpublished, and a build without it went live
    ROLLED_BACK = "rolled_back"  # a build carried it, then the site was rolled back to a release from before it
    FAILED = "failed"  # the build that read it (or was to) failed; the sentence says whether it is retried


#: A successful build whose release went live (builds from before destinations recorded it: one with a release).
WENT_LIVE = Q(published__went_live=True) | (Q(published__isnull=True) & ~Q(release=""))

#: How a build that ended without going live is said.
ENDED_BADLY = {S.FAILED: "failed", S.CANCELLED: "was cancelled", S.LOST: "was lost"}


@dataclass(frozen=True)
class PageStatus:
    kind: StatusKind
    message: str
    build_id: int | None = None
    #: True while the status changes by itself (a build is waiting, running or about to be retried): worth polling.
    moving: bool = False

    def __str__(self):
        return self.message


def publish_status(page):
    """The ``PageStatus`` of one page (two queries at most)."""
    return publish_statuses([page])[page.pk]


def publish_statuses(pages):
    """``{page.pk: PageStatus}`` for saved pages, as their ``is_published`` and ``published_at`` say, in two
    queries whatever their number."""
    pages = [page for page in pages if page.pk is not None]
    published = [page.published_at for page in pages if page.published_at is not None]
    if not published:
        return {page.pk: _without_a_time(page) for page in pages}
    went_live = list(went_live_since(min(published)))
    starts = [build["started_at"] for build in went_live]
    uncovered = [moment for moment in published if not starts or moment > starts[-1]]
    others = _builds_for_uncovered(min(uncovered)) if uncovered else []
    live = _live_build(went_live) if went_live else None
    clock = Clock(timezone.now())
    statuses = {}
    for page in pages:
        if page.published_at is None:
            statuses[page.pk] = _without_a_time(page)
            continue
        first = bisect.bisect_left(starts, page.published_at)
        if first >= len(went_live):
            statuses[page.pk] = _not_yet(page, others, clock)
        elif live is not None and live["started_at"] < page.published_at:
            statuses[page.pk] = _rolled_back(page, live)
        else:
            statuses[page.pk] = _on_the_site(page, went_live[first], clock, live=live)
    return statuses


def went_live_since(moment):
    """The successful builds that went live and started at or after ``moment``, oldest first (an index range:
    ``publisher_build_state_started``)."""
    return (
        Build.objects.filter(WENT_LIVE, state=S.SUCCEEDED, started_at__gte=moment)
        .order_by("started_at", "pk")
        .values("pk", "started_at", "finished_at", "release")
    )


def _live_build(went_live):
    """The build whose release the live pointer names (``pk``, ``started_at``, ``release``), or ``None`` when that
    is not known: no pointer, an unreadable one, or a release that no build here recorded under that id."""
    from .status import live_site

    # A pointer cached before the newest of these builds went live may predate it: read it again then.
    site, _unreadable = live_site(read_after=went_live[-1]["finished_at"])
    if site is None or not site.build or not site.release:
        return None
    for build in reversed(went_live):  # usually the newest one
        if build["pk"] == site.build:
            return build if build["release"] == site.release else None
    found = Build.objects.filter(pk=site.build, release=site.release, started_at__isnull=False)
    return found.values("pk", "started_at", "release").first()


def _builds_for_uncovered(since):
    """The open builds, and those that started at or after ``since`` and ended without going live."""
    fields = ("pk", "state", "started_at", "next_attempt_at", "error", "pages_done", "pages_total")
    open_builds = Build.objects.filter(state__in=OPEN_STATES)
    ended = Build.objects.filter(state__in=tuple(ENDED_BADLY), started_at__gte=since)
    return list((open_builds | ended).values(*fields).order_by("-pk"))


def _without_a_time(page):
    """Never published; or live since before publish times were kept (nothing to compare builds with)."""
    return (
        PageStatus(StatusKind.LIVE, "live") if page.is_published else PageStatus(StatusKind.DRAFT, "not published yet")
    )


def _on_the_site(page, build, clock, *, live=None):
    """``build`` is the first that carried the publish live; ``live`` the live release's, when known (a later one,
    or an older one that also carries it after a rollback)."""
    at = clock.time(build["finished_at"])
    if page.is_published:
        now = live or build
        return PageStatus(StatusKind.LIVE, f"live since {at} (release {now['release']})", now["pk"])
    return PageStatus(StatusKind.TAKEN_DOWN, f"taken down; off the site since {at}", build["pk"])


def _rolled_back(page, live):
    """A build carried the publish at ``page.published_at`` live, but the live release now is an older one's."""
    where = f"the site was rolled back to release {live['release']} (build #{live['pk']}), from before"
    if page.is_published:
        words = f"off the site again: {where} this change — the next build puts it back (publish again, or ask an "
        words += "operator to rebuild)"
    else:
        # Whether that release has the page at all depends on when it was first published, which is not kept.
        words = f"taken down, but {where} it was taken down: the page may be back on the site until the next build"
    return PageStatus(StatusKind.ROLLED_BACK, words, live["pk"])


def _not_yet(page, builds, clock):
    """The publish at ``page.published_at`` that no build that went live has read yet."""
    moment = page.published_at
    active = next((b for b in builds if b["state"] in (S.LAUNCHING, S.LAUNCHED, S.RUNNING)), None)
    queued = next((b for b in builds if b["state"] == S.QUEUED), None)
    running = active if active and active["state"] == S.RUNNING and active["started_at"] >= moment else None
    # The build that will read it: the active one if it has not read content yet, else the queued one.
    upcoming = active if active and active["state"] != S.RUNNING else queued
    # The latest build that read it and ended without going live (builds are newest first).
    ended = next((b for b in builds if b["state"] in ENDED_BADLY and b["started_at"] >= moment), None)
    taken_down = "" if page.is_published else "taken down; "
    if running:
        progress = f" ({percent(running)})" if percent(running) else ""
        if page.is_published:
            return PageStatus(
                StatusKind.BUILDING, f"building in #{running['pk']}{progress}", running["pk"], moving=True
            )
        words = f"taken down; off the site once build #{running['pk']} finishes{progress}"
        return PageStatus(StatusKind.BUILDING, words, running["pk"], moving=True)
    if ended:
        what = f"{taken_down}build #{ended['pk']} {ENDED_BADLY[S(ended['state'])]}"
        if upcoming is None:
            return PageStatus(
                StatusKind.FAILED,
                f"{what} and is not retried automatically — publish again, or ask an operator",
                ended["pk"],
            )
        return PageStatus(StatusKind.FAILED, f"{what} — {retry(upcoming, clock)}", ended["pk"], moving=True)
    if upcoming is None:
        return PageStatus(StatusKind.WAITING, f"{taken_down}waiting for the next build", moving=True)
    if upcoming["state"] == S.QUEUED and upcoming["error"]:  # its launch failed: it goes back to the queue
        return PageStatus(
            StatusKind.FAILED,
            f"{taken_down}build #{upcoming['pk']} could not start — {retry(upcoming, clock, same=True)}",
            upcoming["pk"],
            moving=True,
        )
    if page.is_published:
        return PageStatus(StatusKind.WAITING, f"waiting for build #{upcoming['pk']}", upcoming["pk"], moving=True)
    return PageStatus(
        StatusKind.WAITING,
        f"taken down; off the site once build #{upcoming['pk']} finishes",
        upcoming["pk"],
        moving=True,
    )


def retry(build, clock, *, same=False):
    """When it is tried again: "will be retried at 14:10" (a queued build waiting out a backoff), or "retrying in
    build #14" ("being retried", of the build itself) when that is now."""
    due = build["next_attempt_at"]
    if build["state"] == S.QUEUED and due is not None and due > clock.now:
        return f"will be retried at {clock.time(due)}"
    return "being retried" if same else f"retrying in build #{build['pk']}"


def percent(build):
    """The share of a running build's pages done ("62 %"), or "" while it does not know how many."""
    if not build["pages_total"]:
        return ""
    return f"{100 * (build['pages_done'] or 0) // build['pages_total']} %"


@dataclass(frozen=True)
class Clock:
    """The moment statuses are worded at, and how times are said: HH:MM in the admin's time zone (the current
    one), with the day when it is not today."""

    now: object

    def time(self, moment):
        local = timezone.localtime(moment)
        if local.date() == timezone.localtime(self.now).date():
            return f"{local:%H:%M}"
        return f"{local.day} {local:%b} {local:%H:%M}"
