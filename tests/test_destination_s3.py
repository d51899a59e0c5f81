"""The S3 destination against a real S3 server on loopback (moto's server, in a thread of the test process)."""

import base64
import datetime
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import uuid
from collections import Counter

import boto3
import pytest
import requests
from botocore.awsrequest import AWSResponse
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.utils import timezone
from moto.server import ThreadedMotoServer

from publisher import builds
from publisher.conf import get_config
from publisher.destinations import PointerMoved, ReleaseNotFound, get_destination, release_order
from publisher.destinations import s3 as s3_module
from publisher.destinations.base import DestinationError
from publisher.destinations.s3 import S3Destination
from publisher.models import Build, BuildState, Page
from publisher.progress import Progress
from publisher.release import build_release
from publisher.render import render_site

from .conftest import wait_for

pytestmark = pytest.mark.django_db
BUCKET = "publisher-test-site"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def moto_url():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    ).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def bucket(moto_url, monkeypatch, settings):
    """A fresh prefix of the test bucket as this test's destination; ``bucket.client`` reads it directly."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0)
    prefix = f"t-{uuid.uuid4().hex[:12]}/"
    options = {"BUCKET": BUCKET, "PREFIX": prefix, "ENDPOINT_URL": moto_url}
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "DESTINATION": {"BACKEND": "publisher.destinations.s3.S3Destination", "OPTIONS": options},
    }

    class Bucket:
        url = moto_url
        client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")

        def __init__(self):
            self.prefix = prefix
            self.options = options

        def keys(self, under=""):
            paginator = self.client.get_paginator("list_objects_v2")
            found = []
            for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix + under):
                found += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
            return sorted(found)

        def get(self, key):
            return self.client.get_object(Bucket=BUCKET, Key=prefix + key)

        def live(self):
            return json.loads(self.get("live.json")["Body"].read())

        def configure(self, **extra):
            settings.PUBLISHER = {
                **settings.PUBLISHER,
                "DESTINATION": {"BACKEND": "publisher.destinations.s3.S3Destination", "OPTIONS": {**options, **extra}},
            }

    return Bucket()


class Calls:
    """Every S3 operation the destination's clients make (one per API call, retries not counted), by kind."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, params, model, **kwargs):
        with self.lock:
            self.calls.append((model.name, params.get("Key", "")))

    def kinds(self):
        return Counter(name for name, _ in self.calls)

    def keys(self, kind):
        return sorted(key for name, key in self.calls if name == kind)

    def clear(self):
        self.calls.clear()

    class Requests:
        """A ``before-send`` handler that keeps every request sent (and lets it through)."""

        def __init__(self):
            self.requests = []

        def __call__(self, request, **kwargs):
            self.requests.append(request)


@pytest.fixture
def hooks(monkeypatch):
    """Handlers registered on every client the destination creates: ``hooks.on(event, handler)``."""
    handlers = []
    original = S3Destination.client

    def client(self):
        made = original.fget(self)
        if id(made) not in seen:
            seen.add(id(made))
            for event, handler in handlers:
                made.meta.events.register(event, handler)
        return made

    seen = set()
    monkeypatch.setattr(S3Destination, "client", property(client))

    class Hooks:
        def on(self, event, handler):
            handlers.append((event, handler))
            return handler

    return Hooks()


@pytest.fixture
def calls(hooks):
    return hooks.on("before-parameter-build.s3", Calls())


def bulk_published(count):
    now = timezone.now()
    Page.objects.bulk_create(
        Page.published_copy(slug=f"p{i:03d}", title=f"Page {i}", body="x", published_at=now) for i in range(count)
    )


def publish(slug, title="Title", body="Body"):
    page = Page(slug=slug, title=title, body=body)
    page.publish()
    return page


def build(build_id=1, attempt=1, progress=None):
    return build_release(get_config(), build_id=build_id, attempt=attempt, progress=progress or Progress())


def b64(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def error_response(status, code, message="injected", request_id="INJECTED1"):
    body = f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"

    class Raw:
        def stream(self, **kwargs):
            yield body.encode()

    return AWSResponse("http://injected", status, {"x-amz-request-id": request_id}, Raw())


def test_first_publish_stores_every_file_with_its_type_and_checksum_then_the_seal_then_the_pointer(bucket, calls):
    publish("hello", title="Hello")
    publish("about", title="About")

    outcome = build(build_id=3, attempt=1)

    assert outcome.went_live and outcome.pages == 2 and outcome.copied == 0
    name = outcome.name
    manifest = json.loads(bucket.get(f"manifests/{name}.json")["Body"].read())
    files = manifest["files"]
    (css,) = [path for path in files if path.startswith("assets/")]
    assert re.fullmatch(r"assets/[0-9a-f]{16}/site\.css", css)
    assert sorted(files) == sorted(
        [
            "404.html",
            "about/index.html",
            "hello/index.html",
            "index.html",
            "release.json",
            "robots.txt",
            "sitemap.xml",
            css,
        ]
    )
    assert bucket.keys("releases/") == sorted(f"releases/{name}/{path}" for path in files if path != css)
    assert bucket.keys("assets/") == [css], "content-addressed assets are stored once, outside the releases"
    assert outcome.uploaded == len(files) and outcome.bytes_uploaded == sum(f["size"] for f in files.values())
    for path, entry in files.items():
        key = path if path == css else f"releases/{name}/{path}"
        obj = bucket.client.head_object(Bucket=BUCKET, Key=f"{bucket.prefix}{key}", ChecksumMode="ENABLED")
        data = bucket.get(key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
        assert obj["ContentType"] == entry["type"]
        assert obj["ChecksumSHA256"] == b64(data)
        assert obj["CacheControl"].startswith("public, max-age=")
    assert files["hello/index.html"]["type"] == "text/html; charset=utf-8"
    assert files[css]["type"] == "text/css; charset=utf-8"
    assert f'href="../{css}"' in bucket.get(f"releases/{name}/hello/index.html")["Body"].read().decode()
    css_head = bucket.client.head_object(Bucket=BUCKET, Key=f"{bucket.prefix}{css}")
    assert css_head["CacheControl"] == "public, max-age=31536000, immutable"
    assert bucket.client.head_object(Bucket=BUCKET, Key=f"{bucket.prefix}releases/{name}/index.html")[
        "CacheControl"
    ] == ("public, max-age=60, s-maxage=31536000")
    live = bucket.live()
    assert live["release"] == name and live["build"] == 3 and live["attempt"] == 1 and live["previous"] is None
    assert datetime.datetime.fromisoformat(live["switched_at"]).tzinfo is not None
    # The manifest goes after every file, the pointer after the manifest, conditionally (nothing was there).
    puts = [key for kind, key in calls.calls if kind == "PutObject"]
    assert puts[-2:] == [f"{bucket.prefix}manifests/{name}.json", f"{bucket.prefix}live.json"]
    destination = get_destination()
    assert destination.releases() == [name]
    assert destination.live_release().release == name
    assert destination.open(name, "hello/index.html").startswith(b"<!")
    assert destination.describe() == f"s3://{BUCKET}/{bucket.prefix}"
    with pytest.raises(ReleaseNotFound):
        destination.open(name, "missing/index.html")


def test_a_full_build_uploads_every_file_and_copies_nothing(bucket, calls):
    """``buildstaticsite --full`` on S3: every file afresh, even those the live release has."""
    bulk_published(20)
    first = build(build_id=1)
    calls.clear()
    second = build_release(get_config(), build_id=2, attempt=1, progress=Progress(), full=True)
    assert second.went_live and second.copied == 0 and second.uploaded == first.uploaded
    assert "CopyObject" not in calls.kinds()


def test_a_one_page_edit_uploads_only_what_changed_and_copies_the_rest_server_side(bucket, calls):
    bulk_published(200)
    first = build(build_id=1)
    files = 200 + 2 + 5  # pages, two index pages, sitemap, 404, robots, css, release.json
    assert first.uploaded == files

    page = Page.objects.get(slug="p007")
    page.body = "A new body"
    page.publish()
    calls.clear()
    second = build(build_id=2)

    assert second.went_live
    changed = {"p007/index.html", "sitemap.xml", "release.json"}  # the sitemap carries the page's lastmod
    base = f"{bucket.prefix}releases/{second.name}/"
    assert calls.keys("PutObject") == sorted(
        [base + p for p in changed] + [f"{bucket.prefix}manifests/{second.name}.json", f"{bucket.prefix}live.json"]
    )
    # The stylesheet is content-addressed and shared: the live release already has it, nothing is transferred.
    assert second.uploaded == len(changed) and second.copied == files - len(changed) - 1
    assert calls.kinds() == {
        "GetObject": 2,  # live.json, the live manifest
        "PutObject": len(changed) + 2,  # + the manifest, the pointer
        "CopyObject": files - len(changed) - 1,  # not the shared stylesheet
    }
    manifest = get_destination().manifest(second.name)
    assert second.bytes_uploaded == sum(manifest.files[p].size for p in changed)
    copied = bucket.client.head_object(Bucket=BUCKET, Key=base + "p001/index.html", ChecksumMode="ENABLED")
    assert copied["ContentType"] == "text/html; charset=utf-8" and copied["ChecksumSHA256"]
    assert bucket.get(f"releases/{second.name}/p007/index.html")["Body"].read().count(b"A new body") == 1
    assert bucket.live()["previous"] == first.name


def test_a_file_missing_from_the_live_release_is_uploaded_instead_of_copied(bucket):
    publish("a")
    first = build(build_id=1)
    bucket.client.delete_object(Bucket=BUCKET, Key=f"{bucket.prefix}releases/{first.name}/a/index.html")
    second = build(build_id=2)
    assert second.went_live and second.uploaded == 2  # the page, release.json
    assert get_destination().open(second.name, "a/index.html")


def test_a_title_edit_also_changes_the_index_page(bucket, calls):
    for i in range(5):
        publish(f"p{i:03d}")
    build(build_id=1)
    page = Page.objects.get(slug="p003")
    page.title = "Another title"
    page.publish()
    calls.clear()
    second = build(build_id=2)
    base = f"{bucket.prefix}releases/{second.name}/"
    uploaded = [k[len(base) :] for k in calls.keys("PutObject") if k.startswith(base)]
    assert uploaded == ["index.html", "p003/index.html", "release.json", "sitemap.xml"]


def test_a_removed_page_is_absent_from_the_new_release(bucket):
    publish("stays")
    gone = publish("goes")
    first = build(build_id=1)
    gone.unpublish()
    second = build(build_id=2)
    assert f"releases/{first.name}/goes/index.html" in bucket.keys()
    assert f"releases/{second.name}/goes/index.html" not in bucket.keys()
    assert "goes/index.html" not in get_destination().manifest(second.name).files
    assert b"goes/" not in bucket.get(f"releases/{second.name}/index.html")["Body"].read()


class StopAt(Progress):
    def __init__(self, at):
        self.at = at

    def advance(self, done):
        if done == self.at:
            raise RuntimeError("the build dies mid-render")


def test_a_build_that_dies_mid_render_or_mid_upload_changes_nothing_visible(bucket, hooks):
    for i in range(40):
        publish(f"p{i:03d}")
    first = build(build_id=1)

    with pytest.raises(RuntimeError):
        build(build_id=2, progress=StopAt(20))

    refusing = [True]

    def refuse(request, **kwargs):
        if (
            refusing[0]
            and request.method == "PUT"
            and "/p030/" in request.url
            and "x-amz-copy-source" not in request.headers
        ):
            return error_response(403, "AccessDenied", "Access Denied")
        return None

    Page.objects.filter(slug="p030").update(body="changed", live_body="changed")  # so that p030 is uploaded, not copied
    hooks.on("before-send.s3", refuse)
    with pytest.raises(DestinationError) as failed:
        build(build_id=3)
    assert failed.value.code == "AccessDenied" and not failed.value.retryable

    assert bucket.live()["release"] == first.name
    assert [k for k in bucket.keys("manifests/")] == [f"manifests/{first.name}.json"]
    # The dead builds' writers removed what they had stored (prune would, a day later, otherwise).
    assert {k.split("/")[1] for k in bucket.keys("releases/")} == {first.name}

    refusing[0] = False
    fourth = build(build_id=4)
    assert fourth.went_live and bucket.live()["release"] == fourth.name


def writer_for(destination, build_id):
    destination.live_release()
    name = f"20260101T00000{build_id}-b{build_id}-a1"
    writer = destination.begin(name=name, build=build_id, attempt=1)
    render_site(writer, base_url="http://example.test/", progress=Progress())
    return writer


@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_two_builds_racing_the_pointer_one_wins_and_live_names_a_complete_release(bucket, order):
    publish("a")
    first = build(build_id=1)
    one, two = get_destination(), get_destination()
    older, newer = writer_for(one, 2), writer_for(two, 3)
    winner, loser = (older, newer) if order == "older first" else (newer, older)
    assert winner.destination.publish(winner, pages=1, expected_live=live_of(first)).went_live
    with pytest.raises(PointerMoved):
        loser.destination.publish(loser, pages=1, expected_live=live_of(first))

    live = bucket.live()
    assert live["release"] == winner.name and live["previous"] == first.name
    destination = get_destination()
    sealed = destination.releases()
    assert sealed == sorted([first.name, older.name, newer.name], key=release_order)  # the loser stays sealed
    for path, entry in destination.manifest(live["release"]).files.items():
        assert hashlib.sha256(destination.open(live["release"], path)).hexdigest() == entry.sha256


def live_of(outcome):
    from publisher.destinations import LiveRelease

    return LiveRelease(release=outcome.name)


def test_a_build_never_moves_the_pointer_to_an_older_release(bucket):
    publish("a")
    newer = build(build_id=5)
    older = build(build_id=4)
    assert not older.went_live
    assert bucket.live()["release"] == newer.name
    assert older.name in get_destination().releases()


def test_rollback_is_one_conditional_write_and_needs_a_sealed_release(bucket):
    publish("a")
    first = build(build_id=1)
    publish("b")
    second = build(build_id=2)
    destination = get_destination()

    live = destination.rollback(first.name)

    assert live.release == first.name and live.previous == second.name
    assert bucket.live()["release"] == first.name and bucket.live()["previous"] == second.name
    with pytest.raises(ReleaseNotFound):
        destination.rollback("20260101T000000-b99-a1")
    assert bucket.live()["release"] == first.name
    # A build begun before the rollback cannot undo it.
    stale = get_destination()
    stale._pointer = None
    writer = writer_for(stale, 3)
    stale._pointer = None
    get_destination().rollback(second.name)
    with pytest.raises(PointerMoved):
        stale.publish(writer, pages=2, expected_live=live_of(first))
    assert bucket.live()["release"] == second.name


def test_prune_keeps_live_newest_and_recently_switched_and_removes_dead_leftovers(bucket, settings, monkeypatch):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 2}
    publish("a")
    names = [build(build_id=n).name for n in range(1, 6)]
    destination = get_destination()
    destination.rollback(names[1])  # live: b2, previous: b5, switched just now
    leftover = "20260101T000000-b9-a1"
    bucket.client.put_object(Bucket=BUCKET, Key=f"{bucket.prefix}releases/{leftover}/index.html", Body=b"partial")

    removed = destination.prune()

    assert removed == [names[0], names[2]]  # b1, b3; b2 live, b4 b5 newest (b5 also recently switched away from)
    assert destination.releases() == [names[1], names[3], names[4]]
    assert not bucket.keys(f"releases/{names[0]}/") and not bucket.keys(f"manifests/{names[0]}")
    assert bucket.keys(f"releases/{leftover}/")  # a build may be writing it: kept for a day

    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    monkeypatch.setattr(s3_module, "now", lambda: later)
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    removed = get_destination().prune()
    assert removed == [names[3], leftover]  # b4; b5 newest; b2 live
    assert not bucket.keys(f"releases/{leftover}/")
    assert get_destination().releases() == [names[1], names[4]]


def test_prune_keeps_the_release_switched_away_from_within_the_hour(bucket, settings, monkeypatch):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    publish("a")
    names = [build(build_id=n).name for n in range(1, 4)]  # b3 live, previous b2
    assert get_destination().prune() == [names[0]]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=61)
    monkeypatch.setattr(s3_module, "now", lambda: later)
    assert get_destination().prune() == [names[1]]


def test_prune_deletes_in_batches_of_at_most_1000_manifest_first(bucket, settings, calls):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    destination = get_destination()
    old = "20260101T000000-b1-a1"
    for i in range(1100):
        bucket.client.put_object(Bucket=BUCKET, Key=f"{bucket.prefix}releases/{old}/f{i}", Body=b"x")
    bucket.client.put_object(Bucket=BUCKET, Key=f"{bucket.prefix}manifests/{old}.json", Body=b"{}")
    publish("a")
    build(build_id=2)
    seen = []
    destination.client.meta.events.register(
        "before-parameter-build.s3.DeleteObjects", lambda params, **kw: seen.append(params["Delete"]["Objects"])
    )
    assert destination.prune() == [old]
    assert [len(batch) for batch in seen] == [1, 1000, 100]
    assert seen[0] == [{"Key": f"{bucket.prefix}manifests/{old}.json"}]
    assert not bucket.keys(f"releases/{old}/")


def test_rejected_credentials_give_a_clear_error_without_the_secret(bucket, monkeypatch):
    iam = boto3.client("iam", endpoint_url=bucket.url, region_name="us-east-1")
    user = f"u{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    secret = "wrong-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    requests.post(f"{bucket.url}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    try:
        with pytest.raises(DestinationError) as refused:
            get_destination().live_release()
        messages = get_destination().check()
    finally:
        requests.post(f"{bucket.url}/moto-api/reset-auth", data=b"inf", timeout=5).raise_for_status()
    error = refused.value
    assert error.code == "SignatureDoesNotMatch" and not error.retryable and error.request_id
    assert "AWS_ACCESS_KEY_ID" in str(error) and "IAM role" in str(error)
    assert secret not in str(error) and key["SecretAccessKey"] not in str(error)
    assert [m.id for m in messages] == ["publisher.E032"]
    assert secret not in messages[0].msg and "credentials" in messages[0].msg


def test_no_credentials_at_all(bucket, monkeypatch, tmp_path):
    for name in CREDENTIALS:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(DestinationError) as missing:
        get_destination().live_release()
    assert missing.value.code == "NoCredentials" and "AWS_ACCESS_KEY_ID" in str(missing.value)


def test_check_write_puts_a_probe_with_its_checksum_and_deletes_it(bucket, hooks, calls):
    sent = hooks.on("before-send.s3", Calls.Requests())
    said = get_destination().check_write()
    (put,) = [r for r in sent.requests if r.method == "PUT"]
    key = put.url.split(f"/{BUCKET}/", 1)[1]
    assert re.fullmatch(re.escape(bucket.prefix) + r"\.publisher-probe/[0-9a-f]{32}", key), key
    assert put.headers["x-amz-checksum-sha256"].decode() == b64(b"publisher write probe\n")
    assert [kind for kind, _ in calls.calls] == ["PutObject", "DeleteObject"]
    assert bucket.keys() == [] and key in said


def test_check_write_refused_names_the_bucket_the_action_and_the_request_id(bucket, hooks):
    def refuse(request, **kwargs):
        if request.method == "PUT" and "/.publisher-probe/" in request.url:
            return error_response(403, "AccessDenied", "Access Denied", request_id="RQPROBE1")
        return None

    hooks.on("before-send.s3", refuse)
    with pytest.raises(DestinationError) as refused:
        get_destination().check_write()
    error = refused.value
    assert error.code == "AccessDenied" and error.request_id == "RQPROBE1" and not error.retryable
    message = str(error)
    assert f"S3 refused s3:PutObject on s3://{BUCKET}/{bucket.prefix}.publisher-probe/" in message
    assert "request id RQPROBE1" in message and f"arn:aws:s3:::{BUCKET}/{bucket.prefix}*" in message
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in message.replace(BUCKET, "")
    assert bucket.keys() == []


@pytest.fixture
def iam_user(bucket, monkeypatch):
    """A moto IAM user with the given S3 actions allowed, its keys in the environment, authorization enforced."""
    iam = boto3.client("iam", endpoint_url=bucket.url, region_name="us-east-1")

    def make(*actions):
        user = f"u{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        # moto names HEAD of a bucket s3:HeadBucket (AWS authorizes it as s3:ListBucket).
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": [*actions, "s3:HeadBucket"], "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="publisher", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        requests.post(f"{bucket.url}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
        return key

    yield make
    requests.post(f"{bucket.url}/moto-api/reset-auth", data=b"inf", timeout=5).raise_for_status()


def test_check_write_against_a_policy_that_refuses_the_put(bucket, iam_user):
    key = iam_user("s3:ListBucket", "s3:GetObject")
    destination = get_destination()
    assert destination.check() == [], "reading is allowed: only a write shows what is missing"
    with pytest.raises(DestinationError) as refused:
        destination.check_write()
    error = refused.value
    assert error.code == "AccessDenied" and error.request_id
    assert f"S3 refused s3:PutObject on s3://{BUCKET}/" in str(error) and f"request id {error.request_id}" in str(error)
    assert key["SecretAccessKey"] not in str(error) and "left behind" not in str(error)


def test_check_write_against_a_policy_that_refuses_the_delete_says_the_probe_is_left(bucket, iam_user):
    key = iam_user("s3:ListBucket", "s3:GetObject", "s3:PutObject")
    with pytest.raises(DestinationError) as refused:
        get_destination().check_write()
    error = refused.value
    assert error.code == "AccessDenied" and "S3 refused s3:DeleteObject" in str(error)
    assert "was left behind" in str(error) and key["SecretAccessKey"] not in str(error)


def test_prune_counts_the_objects_it_deleted(bucket, settings):
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    publish("a")
    names = [build(build_id=n).name for n in (1, 2, 3)]
    objects = len(bucket.keys(f"releases/{names[0]}/"))
    pruned = get_destination().prune()
    assert pruned == [names[0]] and pruned.deleted == objects + 1  # its objects and its manifest


def test_prune_keeps_the_release_cloudfront_still_serves(bucket, settings, monkeypatch):
    """A failed KVS write leaves CloudFront on an older release: pruning must not delete it under it."""
    from publisher.destinations import cloudfront

    served = {"live": None}

    class FakeStore:
        def __init__(self, **kwargs):
            pass

        def get_live(self):
            return served["live"]

        def put_live(self, name):
            pass  # the write "fails" silently: CloudFront stays where it was

    monkeypatch.setattr(cloudfront, "KeyValueStore", FakeStore)
    bucket.configure(CLOUDFRONT_KVS_ARN="arn:aws:cloudfront::123456789012:key-value-store/a1b2c3d4")
    settings.PUBLISHER = {**settings.PUBLISHER, "SITE_RELEASES_KEPT": 1}
    publish("a")
    names = [build(build_id=n).name for n in (1, 2, 3, 4)]
    served["live"] = names[0]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)
    monkeypatch.setattr(s3_module, "now", lambda: later)
    assert get_destination().prune() == [names[1], names[2]]
    assert get_destination().releases() == [names[0], names[3]]


def test_s3_answering_500_503_slowdown_then_recovering_is_retried(bucket, hooks):
    publish("a")
    failures = Counter()
    plan = [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable")]

    def flaky(request, **kwargs):
        if request.method == "PUT" and request.url.endswith("/a/index.html"):
            n = failures["page"]
            failures["page"] += 1
            if n < len(plan):
                return error_response(*plan[n])
        return None

    hooks.on("before-send.s3", flaky)
    outcome = build(build_id=1)
    assert outcome.went_live and failures["page"] == len(plan) + 1
    assert bucket.live()["release"] == outcome.name


def test_s3_down_for_good_is_a_retryable_destination_error(bucket, hooks):
    publish("a")
    build(build_id=1)

    def down(request, **kwargs):
        return error_response(503, "SlowDown", request_id="RQ42") if request.method == "PUT" else None

    hooks.on("before-send.s3", down)
    with pytest.raises(DestinationError) as down:
        build(build_id=2)
    assert down.value.code == "SlowDown" and down.value.retryable and down.value.request_id == "RQ42"


def test_an_unreachable_endpoint_is_retryable(bucket, settings):
    from .conftest import free_port

    bucket.configure(ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", MAX_ATTEMPTS=1, CONNECT_TIMEOUT=1)
    with pytest.raises(DestinationError) as down:
        get_destination().live_release()
    assert down.value.retryable and down.value.code == "EndpointConnectionError"
    assert [m.id for m in get_destination().check()] == ["publisher.E032"]


def test_checks(bucket, settings):
    assert get_destination().check() == []
    bucket.configure(BUCKET="")
    assert [m.id for m in get_destination().check()] == ["publisher.E031"]
    bucket.configure(BUCKET="no-such-bucket-here")
    assert [m.id for m in get_destination().check()] == ["publisher.E032"]
    bucket.configure(CLOUDFRONT_KVS_ARN="arn:aws:cloudfront::12345:key-value-store/x")
    assert [m.id for m in get_destination().check()] == ["publisher.E033"]
    bucket.configure(CLOUDFRONT_KVS_ARN="arn:aws:cloudfront::123456789012:key-value-store/a1b2c3d4-5678")
    assert get_destination().check() == []


def test_the_local_destination_check_makes_no_s3_call(settings, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an S3 client was created")

    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    monkeypatch.setattr(boto3, "client", refuse)
    settings.PUBLISHER = {
        **settings.PUBLISHER,
        "DESTINATION": {"BACKEND": "publisher.destinations.local.LocalDestination", "OPTIONS": {}},
    }
    call_command("check")


def test_the_prefix_is_normalised_and_options_are_checked(bucket):
    bucket.configure(PREFIX="site")
    assert get_destination().describe() == f"s3://{BUCKET}/site/"
    bucket.configure(SECRET="x")
    with pytest.raises(ImproperlyConfigured, match="SECRET"):
        get_destination()
    for overlapping in ("site", "site/releases/x", "site/manifests"):
        bucket.configure(PREFIX="site/", MIRROR_PREFIX=overlapping)
        with pytest.raises(ImproperlyConfigured, match="SITE_S3_MIRROR_PREFIX"):
            get_destination()
    bucket.configure(PREFIX="site/", MIRROR_PREFIX="www")
    assert get_destination().mirror_prefix == "www/"


def test_the_cloudfront_key_value_store_is_written_right_after_live_json(bucket, monkeypatch):
    from publisher.destinations import cloudfront

    written = []

    class FakeStore:
        def __init__(self, *, arn, region=None, connect_timeout=5, read_timeout=15):
            self.arn = arn

        def put_live(self, name):
            written.append((self.arn, name, bucket.live()["release"]))

    monkeypatch.setattr(cloudfront, "KeyValueStore", FakeStore)
    arn = "arn:aws:cloudfront::123456789012:key-value-store/a1b2c3d4"
    bucket.configure(CLOUDFRONT_KVS_ARN=arn)
    publish("a")
    first = build(build_id=1)
    assert written == [(arn, first.name, first.name)]  # live.json already named it
    second = build(build_id=2)
    get_destination().rollback(first.name)
    assert [w[1] for w in written] == [first.name, second.name, first.name]


def test_the_sweep_repairs_a_key_value_store_left_behind_by_a_failed_cutover(bucket, monkeypatch):
    """live.json is the source of truth: a KVS write that failed at the cutover is redone by the sweep."""
    from publisher import sweep
    from publisher.destinations import DestinationError, cloudfront

    kvs = {"live": None, "fail": True}

    class FakeStore:
        def __init__(self, **kwargs):
            pass

        def get_live(self):
            return kvs["live"]

        def put_live(self, name):
            if kvs["fail"]:
                raise DestinationError("KVS unavailable", code="ServiceUnavailable")
            kvs["live"] = name

    monkeypatch.setattr(cloudfront, "KeyValueStore", FakeStore)
    bucket.configure(CLOUDFRONT_KVS_ARN="arn:aws:cloudfront::123456789012:key-value-store/a1b2c3d4")
    publish("a")
    first = build(build_id=1)
    assert bucket.live()["release"] == first.name and kvs["live"] is None, "the cutover stood; the KVS lagged"
    kvs["fail"] = False
    monkeypatch.setattr(sweep, "_reconciled", [float("-inf")])
    done = sweep.sweep()
    assert kvs["live"] == first.name and f"set to the live release {first.name}" in str(done)
    assert get_destination().reconcile() is None, "nothing to do when they agree"


def test_without_a_kvs_arn_the_cloudfront_module_is_not_used(bucket, monkeypatch):
    from publisher.destinations import cloudfront

    monkeypatch.setattr(cloudfront, "KeyValueStore", None)
    publish("a")
    assert build(build_id=1).went_live


def mirror_matches(bucket, name):
    """The mirror prefix holds exactly release ``name``'s files (with their content) and ``mirror.json``."""
    manifest = get_destination().manifest(name)
    assert bucket.keys("www/") == sorted([*(f"www/{p}" for p in manifest.files), "www/mirror.json"])
    for path, entry in manifest.files.items():
        body = bucket.get(f"www/{path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry.sha256, f"www/{path} is not {name}'s"
    assert json.loads(bucket.get("www/mirror.json")["Body"].read())["release"] == name


def mirrored(calls, bucket):
    www = f"{bucket.prefix}www/"
    return [k[len(www) :] for kind, k in calls.calls if kind == "CopyObject" and k.startswith(www)]


def test_mirror_prefix_holds_the_live_release_changed_files_only(bucket, calls):
    bucket.configure(MIRROR_PREFIX=f"{bucket.prefix}www")
    publish("a")
    gone = publish("b")
    first = build(build_id=1)
    mirror_matches(bucket, first.name)
    gone.unpublish()
    publish("c")
    calls.clear()
    second = build(build_id=2)
    made = list(calls.calls)
    mirror_matches(bucket, second.name)
    sent = mirrored(calls, bucket)
    assert sent[0] == "c/index.html" and sent.index("index.html") < sent.index("sitemap.xml")
    assert "a/index.html" not in sent and "404.html" not in sent
    # b/ is deleted after everything else is sent; mirror.json is written last of all.
    assert [kind for kind, _ in made][-2:] == ["DeleteObjects", "PutObject"]
    assert made[-1][1] == f"{bucket.prefix}www/mirror.json"
    assert get_destination().mirror_prefix + "mirror.json" == made[-1][1]


def refuse_mirror_copies(hooks, *, after):
    """From the ``after + 1``-th copy into the mirror on, S3 refuses (a mirror cut short); returns a switch."""
    state = {"copies": 0, "on": True}

    def refuse(request, **kwargs):
        if (
            state["on"]
            and request.method == "PUT"
            and "x-amz-copy-source" in request.headers
            and "/www/" in (request.url)
        ):
            state["copies"] += 1
            if state["copies"] > after:
                return error_response(403, "AccessDenied", "Access Denied")
        return None

    hooks.on("before-send.s3", refuse)
    return state


def test_a_mirror_cut_short_is_finished_by_the_next_build_from_its_own_manifest(bucket, hooks, calls, caplog):
    """The next build compares with mirror.json, not with the previous release: what a dead mirror left undone is
    sent even though the next release did not change it."""
    bucket.configure(MIRROR_PREFIX=f"{bucket.prefix}www")
    for slug in ("a", "b", "c"):
        publish(slug, title=f"{slug} v1")
    first = build(build_id=1)
    Page.objects.filter(slug__in=["a", "b"]).update(title="v2", live_title="v2")
    refusing = refuse_mirror_copies(hooks, after=1)  # a/index.html is sent, then the mirror dies
    second = build(build_id=2)
    assert second.went_live and bucket.live()["release"] == second.name, "a mirror failure never fails the cutover"
    assert "Mirror of" in caplog.text and "incomplete" in caplog.text
    assert json.loads(bucket.get("www/mirror.json")["Body"].read())["release"] == first.name  # the old state stays
    assert bucket.get("www/b/index.html")["Body"].read() == get_destination().open(first.name, "b/index.html")

    refusing["on"] = False
    calls.clear()
    third = build(build_id=3)  # no content change: release 3's pages equal release 2's
    mirror_matches(bucket, third.name)
    sent = mirrored(calls, bucket)
    assert "b/index.html" in sent and "index.html" in sent, "what the dead mirror left undone is sent"
    assert "a/index.html" in sent, "a file sent by a mirror that then died is not trusted: sent again"
    assert "c/index.html" not in sent

    calls.clear()
    fourth = build(build_id=4)
    mirror_matches(bucket, fourth.name)
    assert set(mirrored(calls, bucket)) <= {"release.json"}, "a mirror in sync sends only what changed"


def test_a_mirror_prefix_edited_by_hand_is_repaired_by_the_next_build(bucket, calls):
    bucket.configure(MIRROR_PREFIX=f"{bucket.prefix}www")
    for slug in ("a", "b"):
        publish(slug)
    build(build_id=1)
    www = f"{bucket.prefix}www/"
    bucket.client.put_object(Bucket=BUCKET, Key=f"{www}a/index.html", Body=b"defaced", ContentType="text/html")
    bucket.client.delete_object(Bucket=BUCKET, Key=f"{www}b/index.html")
    bucket.client.put_object(Bucket=BUCKET, Key=f"{www}stray.html", Body=b"of neither release")
    calls.clear()
    second = build(build_id=2)
    mirror_matches(bucket, second.name)
    assert {"a/index.html", "b/index.html"} <= set(mirrored(calls, bucket))

    bucket.client.put_object(Bucket=BUCKET, Key=f"{www}mirror.json", Body=b"not json")
    calls.clear()
    third = build(build_id=3)
    mirror_matches(bucket, third.name)
    assert set(mirrored(calls, bucket)) == set(get_destination().manifest(third.name).files), "unknown: all sent"


def test_a_rollback_mirrors_the_release_it_makes_live(bucket):
    bucket.configure(MIRROR_PREFIX=f"{bucket.prefix}www")
    publish("a")
    first = build(build_id=1)
    publish("b")
    build(build_id=2)
    get_destination().rollback(first.name)
    mirror_matches(bucket, first.name)


def first_s3_release(bucket, children, child_env):
    """A child environment with SITE_DESTINATION=s3 on the test server, a first release live, 3000 pages more."""
    env = {
        **child_env,
        **CREDENTIALS,
        "SITE_DESTINATION": "s3",
        "SITE_S3_BUCKET": BUCKET,
        "SITE_S3_PREFIX": bucket.prefix,
        "SITE_S3_ENDPOINT_URL": bucket.url,
    }
    Page.objects.bulk_create([Page.published_copy(slug="first", title="First", body="the first page")])
    proc = children.manage("buildstaticsite", env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    Page.objects.bulk_create(
        Page.published_copy(slug=f"k{i:05d}", title=f"Page {i}", body="x" * 200) for i in range(3000)
    )
    return env, bucket.live()["release"]


def partial_release(bucket, previous):
    """The names of releases other than ``previous`` once one holds more than 100 files (mid-upload)."""
    names = {k.split("/")[1] for k in bucket.keys("releases/")} - {previous}
    return names and len(bucket.keys(f"releases/{next(iter(names))}/")) > 100 and names


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_build_process_sigtermed_mid_upload_exits_143_and_removes_its_partial_release(bucket, children, child_env):
    env, previous = first_s3_release(bucket, children, child_env)
    proc = children.manage("buildstaticsite", env=env)
    names = wait_for(lambda: partial_release(bucket, previous), timeout=120, message="a partial release")
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    assert bucket.live()["release"] == previous
    assert bucket.keys("manifests/") == [f"manifests/{previous}.json"]
    assert all(not bucket.keys(f"releases/{name}/") for name in names)  # the writer's abort removed them


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_build_process_sigkilled_mid_upload_leaves_the_pointer_where_it_was(bucket, children, child_env, monkeypatch):
    env, previous = first_s3_release(bucket, children, child_env)
    proc = children.manage("buildstaticsite", env=env, stdout=subprocess.DEVNULL)
    names = wait_for(lambda: partial_release(bucket, previous), timeout=120, message="a partial release")
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert bucket.live()["release"] == previous
    assert bucket.keys("manifests/") == [f"manifests/{previous}.json"]
    destination = get_destination()
    assert destination.releases() == [previous]
    assert names.isdisjoint(destination.releases())

    # The killed build holds the slot until the sweep or an operator ends it; then the next build completes.
    killed = Build.objects.get(state=BuildState.RUNNING)
    assert builds.cancel(killed.pk).kind == "cancelled"
    proc = children.manage("buildstaticsite", env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    live = bucket.live()
    assert live["release"] not in names | {previous} and live["previous"] == previous
    assert len(get_destination().manifest(live["release"]).files) == 3000 + 1 + 30 + 6
    # A day later the dead build's files go; the live release and the previous one stay.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    monkeypatch.setattr(s3_module, "now", lambda: later)
    assert get_destination().prune() == sorted(names)
    assert {k.split("/")[1] for k in bucket.keys("releases/")} == {previous, live["release"]}
