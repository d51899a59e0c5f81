"""The CloudFront KeyValueStore key that the viewer-request function reads (DESIGN §5, ``cloudfront/``).

With ``SITE_CLOUDFRONT_KVS_ARN`` set, the S3 destination writes the key ``live`` (the live release's name) as part of
the cutover and of a rollback, right after the conditional write of ``live.json``, which stays the source of truth.
The function ``cloudfront/viewer-request.js`` rewrites each viewer URI to ``<prefix>releases/<live>/...``, so the
site switches at every edge within seconds, and the cache needs no invalidation.

The write is ``DescribeKeyValueStore`` (for the store's ETag) then ``PutKey(IfMatch=<ETag>)``: a write that lost a
race with another writer fails with ``PointerMoved`` instead of overwriting it; the caller re-reads ``live.json``.
The data-plane client signs with SigV4A, which botocore does only with ``awscrt`` installed (``botocore[crt]``).
"""

import re

from .base import NAME_PATTERN, DestinationError, PointerMoved

LIVE_KEY = "live"
#: The key prefix of the bucket (SITE_S3_PREFIX) as the function reads it; optional, set once by the operator.
PREFIX_KEY = "prefix"

KVS_ARN_PATTERN = re.compile(
    r"arn:aws:cloudfront::\d{12}:key-value-store/"
    r"[0-9A-Za-z]{8}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{12}"
)

#: Error codes that no retry can fix: the configuration or the permissions are wrong.
PERMANENT = {"AccessDeniedException", "ResourceNotFoundException", "ValidationException", "MissingDependency"}


def valid_kvs_arn(text):
    """Whether ``text`` is a KeyValueStore ARN (``arn:aws:cloudfront::<account>:key-value-store/<id>``)."""
    return isinstance(text, str) and bool(KVS_ARN_PATTERN.fullmatch(text))


class KeyValueStore:
    """The ``live`` key of one CloudFront KeyValueStore. The boto3 client is made on first use."""

    def __init__(self, *, arn, region=None, connect_timeout=5, read_timeout=15):
        self.arn = arn
        # The store is global; the region only picks where the client resolves its endpoint from.
        self.region = region or "us-east-1"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client = None

    def __repr__(self):
        return f"KeyValueStore({self.arn!r})"

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "cloudfront-keyvaluestore",
                region_name=self.region,
                config=Config(
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    retries={"mode": "standard"},
                ),
            )
        return self._client

    def put_live(self, release_name):
        """Make ``release_name`` the value of ``live``; returns the store's new ETag.

        ``PointerMoved`` when the store changed between the read of its ETag and the write (another writer won);
        ``DestinationError`` for any other failure. The key is unchanged in both cases.
        """
        if not NAME_PATTERN.match(release_name or ""):
            raise ValueError(f"Not a release name: {release_name!r}.")
        etag = self._call("describe_key_value_store", "read the ETag of", KvsARN=self.arn)["ETag"]
        answer = self._call(
            "put_key", f"write live={release_name} to", KvsARN=self.arn, Key=LIVE_KEY, Value=release_name, IfMatch=etag
        )
        return answer.get("ETag")

    def get_live(self):
        """The value of ``live``, or ``None`` when the store has no such key (for reconciliation)."""
        from botocore.exceptions import ClientError

        try:
            return self.client.get_key(KvsARN=self.arn, Key=LIVE_KEY)["Value"]
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise self._error(exc, "read live from") from exc
            # The same code says "no such key" and "no such store": only the first is an answer.
            self._call("describe_key_value_store", "read", KvsARN=self.arn)
            return None
        except Exception as exc:
            raise self._error(exc, "read live from") from exc

    def _call(self, operation, doing, **params):
        try:
            return getattr(self.client, operation)(**params)
        except Exception as exc:
            raise self._error(exc, doing) from exc

    def _error(self, exc, doing):
        from botocore.exceptions import BotoCoreError, ClientError, MissingDependencyException

        if isinstance(exc, ClientError):
            code = _code(exc)
            request_id = exc.response.get("ResponseMetadata", {}).get("RequestId") or None
            message = exc.response.get("Error", {}).get("Message") or str(exc)
            cls = PointerMoved if code in {"ConflictException", "PreconditionFailed"} else DestinationError
            return cls(
                f"Could not {doing} the CloudFront KeyValueStore {self.arn}: {code}: {message}"
                + (f" (request id {request_id})" if request_id else ""),
                code=code,
                request_id=request_id,
                retryable=code not in PERMANENT,
            )
        if isinstance(exc, MissingDependencyException):
            return DestinationError(
                f"Could not {doing} the CloudFront KeyValueStore {self.arn}: its API is signed with SigV4A, "
                "which needs awscrt (pip install 'botocore[crt]').",
                code="MissingDependency",
                retryable=False,
            )
        if isinstance(exc, BotoCoreError):
            return DestinationError(
                f"Could not {doing} the CloudFront KeyValueStore {self.arn}: {exc}", code=type(exc).__name__
            )
        if isinstance(exc, DestinationError):
            return exc
        return DestinationError(
            f"Could not {doing} the CloudFront KeyValueStore {self.arn}: {type(exc).__name__}: {exc}",
            code=type(exc).__name__,
        )


def _code(exc):
    return exc.response.get("Error", {}).get("Code") or "Unknown"
