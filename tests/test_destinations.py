"""The destination contract through the recording double and the local folder: loading, sealing, the pointer."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from publisher.conf import get_config
from publisher.destinations import DestinationError, PointerMoved, get_destination, recording
from publisher.destinations.local import LocalDestination
from publisher.destinations.recording import RecordingDestination
from publisher.models import Page
from publisher.progress import Progress
from publisher.release import build_release

pytestmark = pytest.mark.django_db


@pytest.fixture
def in_memory(settings):
    recording.reset()
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "DESTINATION": {"BACKEND": "publisher.destinations.recording.RecordingDestination"},
    }
    yield recording
    recording.reset()


def build(build_id=1, attempt=1):
    return build_release(get_config(), build_id=build_id, attempt=attempt, progress=Progress())


def test_the_configured_destination_is_loaded(settings, in_memory):
    assert isinstance(get_destination(), RecordingDestination)
    settings.PUBLISHER = {**settings.PUBLISHER, "DESTINATION": {}}
    assert isinstance(get_destination(), LocalDestination)
    settings.PUBLISHER = {**settings.PUBLISHER, "DESTINATION": {"BACKEND": "no.such.Destination"}}
    with pytest.raises(ImproperlyConfigured, match="Unknown destination 'no.such.Destination'"):
        get_destination()
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "DESTINATION": {"BACKEND": LocalDestination.__module__ + ".LocalDestination", "OPTIONS": {"BUCKET": "x"}},
    }
    with pytest.raises(ImproperlyConfigured, match="does not accept option"):
        get_destination()


def test_rendering_hands_every_file_to_the_release_and_the_manifest_seals_it(in_memory):
    Page(slug="hello", title="Hello", body="b").publish()
    released = build()
    files = recording.releases[released.name]
    manifest = recording.manifests[released.name]
    assert set(files) == set(manifest.files) >= {"index.html", "hello/index.html", "sitemap.xml", "404.html"}
    assert recording.pointer.release == released.name and manifest.pages == 1
    steps = [step for step, _ in recording.calls if step not in ("add", "upload", "copy")]
    assert steps == ["begin", "seal", "switch", "after switch", "kvs"]
    assert recording.served == released.name and recording.complete(released.name)


@pytest.mark.parametrize("step", ["begin", "add", "upload", "copy", "seal", "switch"])
def test_a_fault_at_any_step_never_points_the_site_at_an_unsealed_release(in_memory, step):
    Page(slug="hello", title="Hello", body="b").publish()
    first = build(build_id=1)
    Page(slug="other", title="Other", body="b").publish()  # so that build 2 uploads one page and copies the rest
    recording.fail_next(step, skip=1 if step in ("add", "copy") else 0)
    with pytest.raises(Exception, match="Recorded failure"):
        build(build_id=2)
    assert recording.pointer.release == first.name and recording.served == first.name
    assert recording.complete(recording.pointer.release)
    (second,) = {name for name in recording.releases if "-b2-" in name} or {None}
    assert (second is not None) == (step == "switch"), "only a sealed release outlives its writer's abort"
    third = build(build_id=3)
    assert recording.pointer.release == third.name and recording.complete(third.name)
    assert not recording.faults


@pytest.mark.parametrize("step", ["add", "upload", "seal", "switch"])
def test_a_process_killed_at_any_step_leaves_the_pointer_and_the_next_prune_clears_its_files(in_memory, step, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    Page(slug="hello", title="Hello", body="b").publish()
    first = build(build_id=1)
    Page(slug="other", title="Other", body="b").publish()
    recording.fail_next(step, kill=True)
    with pytest.raises(recording.Killed):
        build(build_id=2)
    assert recording.pointer.release == first.name
    (dead,) = [name for name in recording.releases if "-b2-" in name]  # a dead process removes nothing
    third = build(build_id=3)
    assert recording.pointer.release == third.name
    pruned = get_destination().prune()
    assert dead in pruned and dead not in recording.releases and dead not in recording.manifests
    assert recording.complete(third.name) and recording.complete(first.name)  # live, and the one it replaced


def test_killed_after_the_pointer_write_the_site_is_on_the_sealed_release_and_the_cdn_lags(in_memory):
    Page(slug="hello", title="Hello", body="b").publish()
    first = build(build_id=1)
    recording.fail_next("after switch", kill=True)
    with pytest.raises(recording.Killed):
        build(build_id=2)
    assert recording.pointer.release != first.name and recording.complete(recording.pointer.release)
    assert recording.served == first.name
    assert "set to the live release" in get_destination().reconcile()
    assert recording.served == recording.pointer.release and get_destination().reconcile() is None


def test_a_failed_cdn_write_is_logged_the_build_goes_live_and_reconcile_repairs_it(in_memory, caplog):
    Page(slug="hello", title="Hello", body="b").publish()
    first = build(build_id=1)
    recording.fail_next("kvs")
    second = build(build_id=2)
    assert second.went_live and recording.pointer.release == second.name and recording.served == first.name
    assert "what is served was not updated" in caplog.text
    get_destination().reconcile()
    assert recording.served == second.name


def test_prune_keeps_live_previous_served_and_newest_counts_what_it_deleted(in_memory, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    Page(slug="hello", title="Hello", body="b").publish()
    names = [build(build_id=n).name for n in (1, 2)]
    recording.fail_next("kvs")  # the CDN keeps serving b2
    names += [build(build_id=n).name for n in (3, 4)]
    assert recording.served == names[3]
    recording.fail_next("kvs", skip=0)
    names.append(build(build_id=5).name)  # live b5, previous b4, served b4
    files = len(recording.releases[names[0]])
    pruned = get_destination().prune()
    assert pruned == [names[0], names[1], names[2]] and pruned.deleted == 3 * (files + 1)
    assert get_destination().releases() == [names[3], names[4]]


def test_a_prune_killed_between_a_manifest_and_its_files_leaves_nothing_sealed_that_is_not_whole(in_memory, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    Page(slug="hello", title="Hello", body="b").publish()
    names = [build(build_id=n).name for n in range(1, 5)]
    recording.fail_next("prune", skip=1, kill=True)  # the start, then the first release: killed there
    with pytest.raises(recording.Killed):
        get_destination().prune()
    assert names[0] not in recording.manifests and names[0] in recording.releases
    assert all(recording.complete(name) for name in recording.manifests)
    assert get_destination().prune() == [names[1], names[0]]  # the sealed one, then the leftover
    assert sorted(recording.releases) == sorted(names[2:])


def test_check_write(in_memory, settings, tmp_path):
    assert "in memory" in get_destination().check_write()
    recording.fail_next("check_write")
    with pytest.raises(DestinationError, match="check_write"):
        get_destination().check_write()
    assert [step for step, _ in recording.calls] == ["check_write", "check_write"]

    root = tmp_path / "site"
    local = LocalDestination(ROOT=str(root))
    assert "wrote and removed" in local.check_write()
    assert root.is_dir() and list(root.iterdir()) == [], "the probe and its symlink are removed"

    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DestinationError) as refused:
        LocalDestination(ROOT=str(tmp_path / "a-file" / "site")).check_write()
    assert f"SITE_ROOT {tmp_path / 'a-file' / 'site'} does not accept a write" in str(refused.value)
    assert refused.value.code == "ENOTDIR" and not refused.value.retryable


def test_the_cutover_is_conditional_on_the_pointer_the_build_read(in_memory):
    Page(slug="hello", title="Hello", body="b").publish()
    build(build_id=1)
    destination = get_destination()
    read = destination.live_release()
    writer = destination.begin(name="20300101T000000-b5-a1", build=5, attempt=1)
    build(build_id=4)  # another cutover wins meanwhile
    with pytest.raises(PointerMoved):
        destination.publish(writer, pages=0, expected_live=read)
