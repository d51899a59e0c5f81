"""The destination contract through the recording double and the local folder: loading, sealing, the pointer."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from publisher.conf import get_config
from publisher.destinations import PointerMoved, get_destination, recording
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
    assert [step for step, _ in recording.calls if step != "store"] == ["begin", "seal", "switch"]


@pytest.mark.parametrize("step", ["store", "seal", "switch"])
def test_a_fault_at_any_step_never_points_the_site_at_an_unsealed_release(in_memory, step):
    Page(slug="hello", title="Hello", body="b").publish()
    first = build(build_id=1)
    recording.fail_next(step)
    with pytest.raises(Exception, match="Recorded failure"):
        build(build_id=2)
    assert recording.pointer.release == first.name
    assert recording.pointer.release in recording.manifests
    third = build(build_id=3)
    assert recording.pointer.release == third.name


def test_the_cutover_is_conditional_on_the_pointer_the_build_read(in_memory):
    Page(slug="hello", title="Hello", body="b").publish()
    build(build_id=1)
    destination = get_destination()
    read = destination.live_release()
    writer = destination.begin(name="20300101T000000-b5-a1", build=5, attempt=1)
    build(build_id=4)  # another cutover wins meanwhile
    with pytest.raises(PointerMoved):
        destination.publish(writer, pages=0, expected_live=read)
