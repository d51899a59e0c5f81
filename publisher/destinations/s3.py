"""The S3 destination (DESIGN §5): one immutable tree per release in a bucket, live through a pointer object.

Keys under ``PREFIX``:

- ``releases/<name>/<path>``: the files of a release. A file whose SHA-256 is in the live release's manifest is
  copied server-side from there (``copy_object``, no bytes through the dyno); any other is uploaded with
  ``ChecksumSHA256`` so S3 verifies what it stored (ETags are never compared: they are not MD5s for multipart or
  SSE-KMS objects).
- ``manifests/<name>.json``: the manifest, written after every file is stored. It is the seal: a release is complete
  exactly when its manifest exists, and only a sealed release can be made live.
- ``live.json``: the pointer ``{"release", "build", "attempt", "switched_at", "previous"}``. The cutover and a
  rollback are ONE conditional ``put_object`` of it: ``IfMatch`` the ETag the build read (``IfNoneMatch="*"`` when
  there was none), so of two writers that read the same pointer exactly one wins; the other gets ``PointerMoved``.
  A build never moves the pointer to a release older than the live one (``release_order``). When
  ``CLOUDFRONT_KVS_ARN`` is set, the KVS key ``live`` is written right after ``live.json`` (the source of truth) and
  the build's recorded success: nothing between the pointer write and the success can fail the build.
- ``.publisher-probe/<random>``: what ``check_write`` (the doctor) puts and deletes to prove write access.

Cache headers (``Cache-Control``) of release objects, chosen for a CDN that keys its cache by release (the
viewer-request function maps ``/<path>`` to ``releases/<live>/<path>``), so an object under a release never changes:

- HTML, sitemaps, ``robots.txt`` (anything a URL names that a new release changes): ``public, max-age=60,
  s-maxage=31536000``: a browser reuses it for a minute, the CDN for a year (a cutover changes the key, not the
  object).
- content-addressed assets (``assets/<sha256[:16]>/site.css``), stored ONCE under ``<prefix>assets/`` and shared by
  every release (a release's manifest lists them; a build whose live release has the asset transfers nothing):
  ``public, max-age=31536000, immutable``. They are never pruned (a few KB each) nor deleted by an abort, since an
  older sealed release may name the same file.
- anything else in a release: ``public, max-age=3600, s-maxage=31536000``.
- the mirror prefix (a plain S3 website, overwritten in place): ``public, max-age=60`` for everything.
- manifests and the pointer are never meant to be public: ``no-store``.

Garbage collection (``prune``) keeps the live release, the newest ``SITE_RELEASES_KEPT`` sealed ones, and the
release switched away from less than ``GRACE`` ago (``previous`` in ``live.json``); it removes a sealed release
manifest first (so nothing looks sealed but is partial), and unsealed leftovers of dead builds older than a day.

Credentials are found the way boto3 finds them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an IAM
role); they are never options and never appear in a message. Every call has a connect and read timeout and
botocore's standard retries (5 attempts, with backoff, for 500/503/SlowDown and connection errors).

moto 5.2.5 (the test server) implements ``IfMatch``/``IfNoneMatch="*"`` on ``put_object`` (412
``PreconditionFailed``), stores and returns ``ChecksumSHA256`` but does not verify it as S3 does.
"""

import base64
import binascii
import datetime
import hashlib
import json
import logging
import re
import threading
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from botocore import exceptions as bx
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from ..interrupts import critical_section
from .base import (
    BaseDestination,
    DestinationError,
    LiveRelease,
    PointerMoved,
    Pruned,
    Published,
    ReleaseNotFound,
    ReleaseWriter,
    release_order,
)
from .manifest import Manifest

logger = logging.getLogger(__name__)

E031 = "publisher.E031"  # no bucket
E032 = "publisher.E032"  # bucket unreachable or credentials refused
E033 = "publisher.E033"  # malformed CLOUDFRONT_KVS_ARN

KVS_ARN = re.compile(r"^arn:aws:cloudfront::\d{12}:key-value-store/[A-Za-z0-9-]+$")
POINTER = "live.json"
#: ``check_write`` puts and deletes ``<prefix><PROBE><random>``, outside every release.
PROBE = ".publisher-probe/"
#: The mirror's own manifest: what the mirror prefix holds (each file's SHA-256 and the ETag it got when mirrored),
#: written last, after the deletions. A mirror cut short leaves the previous one, so the next run re-sends whatever
#: differs from it.
MIRROR_MANIFEST = "mirror.json"
#: A release switched away from less than this long ago is kept: browsers and CDN edges may still be serving it.
GRACE = datetime.timedelta(hours=1)
#: Files of a release without a manifest (a dead build's) are removed once their newest object is this old.
LEFTOVER_AGE = datetime.timedelta(days=1)
DELETE_BATCH = 1000

CACHE_PAGE = "public, max-age=60, s-maxage=31536000"
CACHE_OTHER = "public, max-age=3600, s-maxage=31536000"
CACHE_ASSET = "public, max-age=31536000, immutable"
#: Content-addressed files (``assets/<hash>/…``) are stored once under ``<prefix>assets/``, shared by every release.
ASSETS = "assets/"
CACHE_MIRROR = "public, max-age=60"
CACHE_PRIVATE = "no-store"

#: Error codes that mean "these credentials are not accepted": the message says what to set.
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken", "InvalidToken"}
)
CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the dyno an IAM role) for a principal "
    "allowed s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the bucket"
)


def now():
    """The clock GC decisions use (tests move it)."""
    return datetime.datetime.now(datetime.UTC)


def cache_control(path):
    if path.startswith(ASSETS):
        return CACHE_ASSET
    name = path.rsplit("/", 1)[-1]
    if name.endswith((".html", ".xml")) or name == "robots.txt":
        return CACHE_PAGE
    return CACHE_OTHER


def b64_sha256(hexdigest):
    return base64.b64encode(binascii.unhexlify(hexdigest)).decode("ascii")


def _error_code(exc):
    return (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")


def translate(exc, doing):
    """A ``DestinationError`` for a botocore failure while ``doing`` (a few words), without secrets."""
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code") or meta.get("HTTPStatusCode") or "")
        request_id = meta.get("RequestId") or meta.get("HTTPHeaders", {}).get("x-amz-request-id") or None
        status = meta.get("HTTPStatusCode")
        if code in CREDENTIAL_CODES:
            return DestinationError(
                f"S3 refused the credentials while {doing} ({code}): {CREDENTIALS_HINT}.",
                code=code,
                request_id=request_id,
                retryable=False,
            )
        retryable = bool(status and status >= 500) or code in ("SlowDown", "RequestTimeout", "InternalError")
        message = error.get("Message") or "no message"
        return DestinationError(
            f"S3 error while {doing}: {code} {message} (request id {request_id or 'none'}).",
            code=code,
            request_id=request_id,
            retryable=retryable,
        )
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return DestinationError(
            f"No AWS credentials found while {doing}: {CREDENTIALS_HINT}.", code="NoCredentials", retryable=False
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return DestinationError(f"S3 unreachable while {doing}: {exc}.", code=type(exc).__name__, retryable=True)
    return DestinationError(f"S3 client error while {doing}: {exc}.", code=type(exc).__name__, retryable=True)


BOTO_ERRORS = (bx.ClientError, bx.BotoCoreError)


class S3ReleaseWriter(ReleaseWriter):
    """Stores the files of one release under ``releases/<name>/`` through a bounded pool of transfers."""

    WORKERS = 16
    #: Submitted transfers not yet finished, at most: ``add`` waits beyond this, so memory stays flat.
    MAX_PENDING = 64

    def __init__(self, destination, *, parent_manifest, pointer_etag, **kwargs):
        super().__init__(destination, **kwargs)
        self.parent_manifest = parent_manifest
        self.pointer_etag = pointer_etag
        self.root = destination.key(f"releases/{self.name}/")
        files = parent_manifest.files.values() if parent_manifest else ()
        #: sha256 -> key of a file with that content in the live release (copied instead of uploaded)
        self.sources = {e.sha256: destination.file_key(parent_manifest.release, e.path) for e in files}
        #: shared assets the live release already has: nothing to transfer
        self.shared = {e.path for e in files if e.path.startswith(ASSETS)}
        self.uploaded = 0
        self.copied = 0
        self.bytes_uploaded = 0
        self.stored = []  # keys written, for abort
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.WORKERS, thread_name_prefix="s3-release")
        self._pending = deque()
        self._failed = False

    def _store(self, entry, data):
        if "\\" in entry.path or entry.path.startswith("/") or ".." in entry.path.split("/"):
            raise ValueError(f"{entry.path!r} is not a path inside the release")
        if self._failed:
            self.finish()  # raises the first error: stop rendering a release that can never be sealed
        while len(self._pending) >= self.MAX_PENDING:
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            for future in done:
                self._pending.remove(future)
                future.result()  # the first error, raised in the build's thread
        self._pending.append(self._pool.submit(self._transfer, entry, data))

    def _transfer(self, entry, data):
        if self._failed:
            return  # another transfer failed: the release is dead, stop spending requests on it
        key = self.destination.file_key(self.name, entry.path)
        if entry.path in self.shared:
            return  # content-addressed and already stored for the live release
        client = self.destination.client
        bucket = self.destination.bucket
        source = self.sources.get(entry.sha256)
        try:
            if source is not None:
                try:
                    client.copy_object(
                        Bucket=bucket,
                        Key=key,
                        CopySource={"Bucket": bucket, "Key": source},
                        MetadataDirective="REPLACE",
                        ContentType=entry.content_type,
                        CacheControl=cache_control(entry.path),
                        ChecksumAlgorithm="SHA256",
                    )
                except bx.ClientError as exc:
                    if _error_code(exc) not in ("NoSuchKey", "404"):
                        raise
                    logger.warning("%s is in the live manifest but not in the bucket: uploading %s", source, key)
                    source = None
                else:
                    with self._lock:
                        self.copied += 1
                        self._stored(entry, key)
            if source is None:
                client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=data,
                    ContentType=entry.content_type,
                    CacheControl=cache_control(entry.path),
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=b64_sha256(entry.sha256),
                )
                with self._lock:
                    self.uploaded += 1
                    self.bytes_uploaded += entry.size
                    self._stored(entry, key)
        except BOTO_ERRORS as exc:
            self._failed = True
            raise translate(exc, f"storing {key}") from None
        except BaseException:
            self._failed = True
            raise

    def _stored(self, entry, key):
        # A shared asset may belong to an older sealed release too: an abort never deletes one.
        if not entry.path.startswith(ASSETS):
            self.stored.append(key)

    def finish(self):
        """Wait for every transfer; raise the first error (a ``DestinationError``)."""
        pending = list(self._pending)
        wait(pending)
        self._pending.clear()
        for future in pending:
            future.result()

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self):
        """Stop the transfers and remove what this writer stored, unless it is sealed (then ``prune`` decides).
        Best effort: whatever is left is an unsealed leftover that ``prune`` removes after a day."""
        self._failed = True
        for future in list(self._pending):
            future.cancel()
        self.close()
        try:
            if self.destination._exists(self.destination.manifest_key(self.name)):
                return
            self.destination._delete_keys(list(self.stored))
        except DestinationError as exc:
            logger.warning("Could not remove the partial release %s (prune will): %s", self.name, exc)


class S3Destination(BaseDestination):
    """Options: ``BUCKET`` (required), ``PREFIX``, ``ENDPOINT_URL``, ``REGION``, ``CLOUDFRONT_KVS_ARN``,
    ``MIRROR_PREFIX``, ``CONNECT_TIMEOUT`` (5), ``READ_TIMEOUT`` (30), ``MAX_ATTEMPTS`` (5), ``KEPT`` (default
    ``SITE_RELEASES_KEPT``)."""

    name = "s3"
    option_defaults = {
        "BUCKET": "",
        "PREFIX": "",
        "ENDPOINT_URL": "",
        "REGION": "",
        "CLOUDFRONT_KVS_ARN": "",
        "MIRROR_PREFIX": "",
        "CONNECT_TIMEOUT": 5,
        "READ_TIMEOUT": 30,
        "MAX_ATTEMPTS": 5,
        "KEPT": None,
    }

    def __init__(self, **options):
        super().__init__(**options)
        self.bucket = self.options["BUCKET"] or ""
        self.prefix = _as_prefix(self.options["PREFIX"])
        self.mirror_prefix = _as_prefix(self.options["MIRROR_PREFIX"])
        if self.mirror_prefix and _overlaps(self.mirror_prefix, self.prefix):
            raise ImproperlyConfigured(
                f"SITE_S3_MIRROR_PREFIX {self.mirror_prefix!r} overlaps the releases under SITE_S3_PREFIX "
                f"{self.prefix!r}: the mirror deletes what the live release lacks, so it needs a prefix of its own "
                "(e.g. www/)."
            )
        kept = self.options["KEPT"] if self.options["KEPT"] is not None else self.config.SITE_RELEASES_KEPT
        self.kept = max(1, int(kept))
        self._client = None
        self._client_lock = threading.Lock()
        #: The pointer as last read: (LiveRelease or None, ETag or None).
        self._pointer = None

    # -- the client ---------------------------------------------------------------------------------------------

    @property
    def client(self):
        """The boto3 S3 client, created on first use (so a check or an import never touches the network)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client(max_attempts=int(self.options["MAX_ATTEMPTS"]))
            return self._client

    def _make_client(self, *, max_attempts):
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=int(self.options["CONNECT_TIMEOUT"]),
            read_timeout=int(self.options["READ_TIMEOUT"]),
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=S3ReleaseWriter.WORKERS + 4,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.options["ENDPOINT_URL"] or None,
            region_name=self.options["REGION"] or None,
            config=config,
        )

    def key(self, relative):
        return self.prefix + relative

    def file_key(self, name, path):
        """The key of file ``path`` of release ``name``: shared assets once, everything else in the release."""
        return self.key(path) if path.startswith(ASSETS) else self.key(f"releases/{name}/{path}")

    def manifest_key(self, name):
        return self.key(f"manifests/{name}.json")

    def _call(self, doing, method, **kwargs):
        if not self.bucket:
            raise DestinationError("SITE_S3_BUCKET is not set.", code="NoBucket", retryable=False)
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except BOTO_ERRORS as exc:
            raise translate(exc, doing) from None

    def _get(self, key, doing):
        """The object's bytes and ETag, or ``(None, None)`` when there is no such key."""
        try:
            response = self._call(doing, "get_object", Key=key)
        except DestinationError as exc:
            if exc.code in ("NoSuchKey", "404"):
                return None, None
            raise
        try:
            return response["Body"].read(), response.get("ETag")
        except BOTO_ERRORS as exc:
            raise translate(exc, doing) from None

    def _exists(self, key):
        try:
            self._call(f"looking for {key}", "head_object", Key=key)
        except DestinationError as exc:
            if exc.code in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def _list(self, prefix, *, delimiter=None):
        """Every object (and common prefix, with ``delimiter``) under ``prefix``, through the paginator."""
        if not self.bucket:
            raise DestinationError("SITE_S3_BUCKET is not set.", code="NoBucket", retryable=False)
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                yield from page.get("Contents", [])
                for common in page.get("CommonPrefixes", []):
                    yield {"Prefix": common["Prefix"]}
        except BOTO_ERRORS as exc:
            raise translate(exc, f"listing {prefix}") from None

    def _delete_keys(self, keys):
        """Delete ``keys`` in batches of ``DELETE_BATCH``; returns how many were deleted."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            response = self._call(
                f"deleting {len(batch)} objects",
                "delete_objects",
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise DestinationError(
                    f"S3 refused to delete {len(errors)} object(s), e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}",
                    code=first.get("Code"),
                )
        return len(keys)

    # -- the pointer --------------------------------------------------------------------------------------------

    def _read_pointer(self):
        body, etag = self._get(self.key(POINTER), "reading the live pointer")
        if body is None:
            self._pointer = (None, None)
            return self._pointer
        try:
            data = json.loads(body)
            live = LiveRelease(
                release=data["release"],
                build=data.get("build"),
                attempt=data.get("attempt"),
                switched_at=data.get("switched_at") or "",
                previous=data.get("previous"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DestinationError(
                f"s3://{self.bucket}/{self.key(POINTER)} is not a live pointer ({type(exc).__name__}).",
                code="BadPointer",
                retryable=False,
            ) from None
        self._pointer = (live, etag)
        return self._pointer

    def _write_pointer(self, manifest, *, previous, etag):
        """The one conditional write: ``live.json`` names ``manifest``'s release if nobody moved it since ``etag``
        was read (``None``: there was no pointer). ``PointerMoved`` otherwise."""
        switched_at = now().isoformat(timespec="seconds")
        body = {
            "release": manifest.release,
            "build": manifest.build,
            "attempt": manifest.attempt,
            "switched_at": switched_at,
            "previous": previous,
        }
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            response = self._call(
                f"switching the live pointer to {manifest.release}",
                "put_object",
                Key=self.key(POINTER),
                Body=(json.dumps(body, indent=2) + "\n").encode(),
                ContentType="application/json",
                CacheControl=CACHE_PRIVATE,
                **condition,
            )
        except DestinationError as exc:
            # 412: the ETag no longer matches; 409: a concurrent conditional write; NoSuchKey: removed since read.
            if exc.code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                raise PointerMoved(
                    f"The live pointer moved since this build read it; release {manifest.release} stays sealed "
                    f"but not live ({exc.code}).",
                    code=exc.code,
                    request_id=exc.request_id,
                    retryable=False,
                ) from None
            raise
        live = LiveRelease(
            release=manifest.release,
            build=manifest.build,
            attempt=manifest.attempt,
            switched_at=switched_at,
            previous=previous,
        )
        self._pointer = (live, response.get("ETag"))
        return live

    def _kvs(self):
        from .cloudfront import KeyValueStore

        return KeyValueStore(
            arn=self.options["CLOUDFRONT_KVS_ARN"],
            region=self.options["REGION"] or None,
            connect_timeout=int(self.options["CONNECT_TIMEOUT"]),
            read_timeout=int(self.options["READ_TIMEOUT"]),
        )

    def reconcile(self):
        """The KVS key ``live`` names what ``live.json`` names: a cutover whose KVS write failed is repaired here
        (two reads when they agree; nothing at all without ``CLOUDFRONT_KVS_ARN``)."""
        if not self.options["CLOUDFRONT_KVS_ARN"]:
            return None
        live = self.live_release()
        if live is None:
            return None
        store = self._kvs()
        served = store.get_live()
        if served == live.release:
            return None
        store.put_live(live.release)
        return f"CloudFront's KeyValueStore named {served or 'nothing'}; set to the live release {live.release}"

    def _put_kvs(self, name):
        """Write the KVS key ``live`` (what CloudFront serves), when ``CLOUDFRONT_KVS_ARN`` is set. ``live.json``
        has already moved and is the source of truth (and the build's success is recorded), so a failure here is
        logged, not raised: the release is live by the pointer, and the sweep (``reconcile``), the next cutover or
        a rollback writes the key again."""
        if not self.options["CLOUDFRONT_KVS_ARN"]:
            return
        try:
            self._kvs().put_live(name)
        except DestinationError as exc:
            logger.error(
                "live.json names %s but the CloudFront KeyValueStore key 'live' was not written: %s "
                "(CloudFront serves the previous release until the next cutover or rollback)",
                name,
                exc,
            )

    # -- the contract -------------------------------------------------------------------------------------------

    def live_release(self):
        return self._read_pointer()[0]

    def manifest(self, name):
        body, _ = self._get(self.manifest_key(name), f"reading the manifest of {name}")
        if body is None:
            raise ReleaseNotFound(f"Release {name} is not sealed in s3://{self.bucket}/{self.prefix}.")
        try:
            return Manifest.from_json(body.decode("utf-8"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ReleaseNotFound(f"Release {name} has no readable manifest ({type(exc).__name__}).") from None

    def begin(self, *, name, build, attempt, full=False):
        """A writer that copies unchanged files server-side from the live release, or uploads every file when
        ``full`` (``buildstaticsite --full``) or when the live release has no manifest."""
        live, etag = self._pointer if self._pointer is not None else self._read_pointer()
        parent = None
        if live is not None and not full:
            try:
                parent = self.manifest(live.release)
            except ReleaseNotFound:
                logger.warning("The live release %s has no manifest: every file is uploaded", live.release)
        return S3ReleaseWriter(
            self,
            name=name,
            build=build,
            attempt=attempt,
            parent=live.release if live else None,
            parent_manifest=parent,
            pointer_etag=etag,
        )

    def publish(self, writer, *, pages, expected_live=None, after_switch=None):
        """Wait for the transfers, seal (the manifest), then one conditional write of ``live.json``."""
        manifest = writer.manifest
        manifest.pages = pages
        manifest.created_at = now().isoformat(timespec="seconds")
        try:
            writer.add(
                "release.json",
                json.dumps(
                    {
                        "build": manifest.build,
                        "attempt": manifest.attempt,
                        "name": writer.name,
                        "pages": pages,
                        "time": manifest.created_at,
                    },
                    indent=2,
                )
                + "\n",
                "application/json",
            )
            writer.finish()
        finally:
            writer.close()
        self._call(
            f"sealing release {writer.name}",
            "put_object",
            Key=self.manifest_key(writer.name),
            Body=manifest.to_json().encode(),
            ContentType="application/json",
            CacheControl=CACHE_PRIVATE,
            ChecksumAlgorithm="SHA256",
        )
        transfers = {
            "uploaded": writer.uploaded,
            "copied": writer.copied,
            "bytes_uploaded": writer.bytes_uploaded,
        }
        expected = expected_live.release if expected_live else None
        read = writer.manifest.parent
        if expected != read:
            raise PointerMoved(
                f"The live pointer moved between the build's start ({expected}) and its writer ({read}).",
                retryable=False,
            )
        if read is not None and release_order(read) > release_order(writer.name):
            logger.warning("Release %s not switched live: the newer release %s is already live", writer.name, read)
            published = Published(went_live=False, **transfers)
            with critical_section():
                if after_switch is not None:
                    after_switch(published)  # as the local destination does: the build is done, kept sealed
            return published
        with critical_section():
            # Nothing may raise between the pointer write and the recorded success: the outcome is the switch's.
            live = self._write_pointer(manifest, previous=read, etag=writer.pointer_etag)
            published = Published(went_live=True, **transfers)
            if after_switch is not None:
                after_switch(published)
        self._put_kvs(manifest.release)
        if self.mirror_prefix:
            self._mirror(manifest)
        logger.info("Release %s live in %s (previous %s)", live.release, self.describe(), read)
        return published

    def rollback(self, name):
        manifest = self.manifest(name)  # ReleaseNotFound unless sealed
        live, etag = self._read_pointer()
        with critical_section():
            result = self._write_pointer(manifest, previous=live.release if live else None, etag=etag)
        self._put_kvs(name)
        if self.mirror_prefix:
            self._mirror(manifest)
        return result

    def releases(self):
        root = self.key("manifests/")
        names = [
            obj["Key"][len(root) : -len(".json")]
            for obj in self._list(root)
            if "Key" in obj and obj["Key"].endswith(".json")
        ]
        return sorted(names, key=release_order)

    def prune(self):
        """Returns a ``Pruned``: the releases removed and how many objects were deleted with them."""
        live, _ = self._read_pointer()
        sealed = self.releases()
        keep = set(sealed[-self.kept :])
        if live is not None:
            keep.add(live.release)
            if live.previous and _recent(live.switched_at):
                keep.add(live.previous)
        if self.options["CLOUDFRONT_KVS_ARN"]:
            # What CloudFront serves may lag behind live.json (a failed KVS write): never delete it under it.
            served = self._kvs().get_live()
            if served:
                keep.add(served)
        removed, deleted = [], 0
        for name in sealed:
            if name in keep:
                continue
            # The manifest first: from this instant the release is not sealed, so nothing can make it live.
            deleted += self._delete_keys([self.manifest_key(name)])
            deleted += self._delete_keys([obj["Key"] for obj in self._list(self.key(f"releases/{name}/"))])
            removed.append(name)
        sealed_set = set(sealed)
        root = self.key("releases/")
        for common in self._list(root, delimiter="/"):
            prefix = common.get("Prefix")
            if not prefix:
                continue
            name = prefix[len(root) :].rstrip("/")
            if name in sealed_set or name in keep:
                continue
            objects = list(self._list(prefix))
            if not objects or now() - max(o["LastModified"] for o in objects) < LEFTOVER_AGE:
                continue  # perhaps a build writing it now
            if self._exists(self.manifest_key(name)):
                continue  # sealed since we listed
            logger.info("Removing the unsealed release %s left by an interrupted build", name)
            deleted += self._delete_keys([o["Key"] for o in objects])
            removed.append(name)
        return Pruned(removed, deleted=deleted)

    def open(self, name, path):
        body, _ = self._get(self.file_key(name, path), f"reading {path} of {name}")
        if body is None:
            raise ReleaseNotFound(f"Release {name} has no file {path!r}.")
        return body

    def check(self):
        messages = []
        arn = self.options["CLOUDFRONT_KVS_ARN"]
        if arn and not KVS_ARN.match(arn):
            messages.append(
                checks.Error(
                    f"SITE_CLOUDFRONT_KVS_ARN {arn!r} is not a CloudFront KeyValueStore ARN.",
                    hint="It looks like arn:aws:cloudfront::123456789012:key-value-store/<id>.",
                    id=E033,
                )
            )
        if not self.bucket:
            messages.append(
                checks.Error(
                    "SITE_DESTINATION is 's3' but SITE_S3_BUCKET is not set.",
                    hint="Set SITE_S3_BUCKET to the bucket releases are written to (DESIGN §5).",
                    id=E031,
                )
            )
            return messages
        try:
            # One attempt, not the builds' retries: every management command runs the checks.
            self._make_client(max_attempts=1).head_bucket(Bucket=self.bucket)
        except BOTO_ERRORS as exc:
            exc = translate(exc, f"checking s3://{self.bucket}")
            messages.append(
                checks.Error(
                    f"The bucket s3://{self.bucket} cannot be used: {exc}",
                    hint="Check SITE_S3_BUCKET, SITE_S3_ENDPOINT_URL, SITE_S3_REGION and the AWS credentials.",
                    id=E032,
                )
            )
        return messages

    def check_write(self):
        """Put a small probe object (with its SHA-256 checksum, as builds do) under ``<prefix>.publisher-probe/``
        and delete it: proves the credentials may write and delete where releases go. Refusals name the bucket,
        the action and S3's request id, never a secret."""
        if not self.bucket:
            raise DestinationError("SITE_S3_BUCKET is not set.", code="NoBucket", retryable=False)
        key = self.key(f"{PROBE}{uuid.uuid4().hex}")
        data = b"publisher write probe\n"
        steps = (
            (
                "s3:PutObject",
                lambda: self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType="text/plain",
                    CacheControl=CACHE_PRIVATE,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=b64_sha256(hashlib.sha256(data).hexdigest()),
                ),
            ),
            ("s3:DeleteObject", lambda: self.client.delete_object(Bucket=self.bucket, Key=key)),
        )
        for action, call in steps:
            try:
                call()
            except BOTO_ERRORS as exc:
                raise self._refused(exc, action, key, left=action != "s3:PutObject") from None
        return f"put and deleted s3://{self.bucket}/{key}"

    def _refused(self, exc, action, key, *, left):
        error = translate(exc, f"{action} of s3://{self.bucket}/{key}")
        where = f"s3://{self.bucket}/{key}"
        said = f"({error.code}, request id {error.request_id or 'none'})"
        if error.code == "AccessDenied":
            message = (
                f"S3 refused {action} on {where} {said}: the credentials were accepted but their policy does not "
                f"allow {action} on arn:aws:s3:::{self.bucket}/{self.prefix}*; builds need s3:PutObject, "
                "s3:GetObject and s3:DeleteObject there, and s3:ListBucket on the bucket."
            )
        else:
            message = f"{action} on {where} failed {said}: {error}"
        if left:
            message += f" The probe {where} was left behind; delete it by hand."
        return DestinationError(message, code=error.code, request_id=error.request_id, retryable=error.retryable)

    def describe(self):
        return f"s3://{self.bucket}/{self.prefix}"

    # -- the mirror ---------------------------------------------------------------------------------------------

    def _mirror(self, manifest):
        """Copy the live release into ``MIRROR_PREFIX`` (a plain S3 website), ordered so that no page links to a
        file not there yet: new and changed pages (and other files), then the index pages, then the sitemaps and
        ``robots.txt``, then deletions, then ``mirror.json``. Not atomic.

        What is there is judged against the mirror's own state, not against the previous release: a file is sent
        unless ``mirror.json`` records it with this release's SHA-256 AND the listing shows the ETag it got when it
        was mirrored (so a file rewritten by hand or by a mirror cut short is sent again), and every key the
        release lacks is deleted (files of neither release included). A failure is logged; the next cutover or
        rollback finishes the job from whatever it finds. Returns the number of files sent."""
        state_key = self.mirror_prefix + MIRROR_MANIFEST
        try:
            listed = {
                obj["Key"][len(self.mirror_prefix) :]: obj.get("ETag")
                for obj in self._list(self.mirror_prefix)
                if obj.get("Key") and obj["Key"] != state_key
            }
            state = self._mirror_state(state_key)
        except DestinationError as exc:
            logger.warning("Mirror not updated: %s", exc)
            return 0

        def in_sync(path, entry):
            known = state.get(path)
            return bool(known) and known["sha256"] == entry.sha256 and known["etag"] == listed.get(path, False)

        def stage(path):
            if path == "index.html" or path.startswith("page/"):
                return 1
            if path.startswith("sitemap") or path == "robots.txt":
                return 2
            return 0

        etags = {path: listed[path] for path, entry in manifest.files.items() if in_sync(path, entry)}
        changed = [entry for path, entry in manifest.files.items() if path not in etags]
        try:
            for level in (0, 1, 2):
                for entry in sorted((e for e in changed if stage(e.path) == level), key=lambda e: e.path):
                    response = self._call(
                        f"mirroring {entry.path}",
                        "copy_object",
                        Key=self.mirror_prefix + entry.path,
                        CopySource={"Bucket": self.bucket, "Key": self.file_key(manifest.release, entry.path)},
                        MetadataDirective="REPLACE",
                        ContentType=entry.content_type,
                        CacheControl=CACHE_MIRROR,
                    )
                    etags[entry.path] = (response.get("CopyObjectResult") or {}).get("ETag")
            self._delete_keys(sorted(self.mirror_prefix + p for p in listed if p not in manifest.files))
            body = {
                "format": 1,
                "release": manifest.release,
                "files": {path: {"sha256": manifest.files[path].sha256, "etag": etags[path]} for path in sorted(etags)},
            }
            self._call(
                "writing the mirror's manifest",
                "put_object",
                Key=state_key,
                Body=(json.dumps(body, separators=(",", ":")) + "\n").encode(),
                ContentType="application/json",
                CacheControl=CACHE_PRIVATE,
            )
        except DestinationError as exc:
            logger.warning("Mirror of %s incomplete (the next cutover finishes it): %s", manifest.release, exc)
        return len(changed)

    def _mirror_state(self, key):
        """``{path: {"sha256", "etag"}}`` from ``mirror.json``; empty when missing or unreadable (then everything
        is sent again)."""
        body, _ = self._get(key, "reading the mirror's manifest")
        if body is None:
            return {}
        try:
            files = json.loads(body)["files"]
            return {path: {"sha256": f["sha256"], "etag": f["etag"]} for path, f in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s is not a mirror manifest: the whole release is mirrored again", key)
            return {}


def _as_prefix(value):
    value = (value or "").strip().lstrip("/")
    return value if not value or value.endswith("/") else value + "/"


def _overlaps(mirror, prefix):
    """Whether the mirror prefix (a key prefix in the bucket) could hold keys of the release store."""
    ours = [prefix + "releases/", prefix + "manifests/", prefix + POINTER]
    return any(key.startswith(mirror) or mirror.startswith(key) for key in ours)


def _recent(switched_at):
    try:
        when = datetime.datetime.fromisoformat(switched_at)
    except (TypeError, ValueError):
        return True  # unknown: keep it
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return now() - when < GRACE
