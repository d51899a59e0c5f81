"""The CloudFront side of the S3 destination: the viewer-request function (run under node) and the KVS write."""

import datetime
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from botocore.stub import Stubber

from publisher.destinations.base import DestinationError, PointerMoved
from publisher.destinations.cloudfront import KeyValueStore, valid_kvs_arn

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = ROOT / "cloudfront" / "viewer-request.js"
HARNESS = Path(__file__).resolve().parent / "cloudfront_harness.mjs"

LIVE = "20261201T150000-b12-a1"
NEXT = "20261201T160000-b13-a1"
ARN = "arn:aws:cloudfront::123456789012:key-value-store/a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"


# --- the function ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node():
    path = shutil.which("node")
    if path is None:
        # Not a skip: CI has node, and an untested function would go live unnoticed.
        pytest.fail("node is not on PATH: tests/test_cloudfront.py runs cloudfront/viewer-request.js with node (>= 18)")
    return path


@pytest.fixture
def run(node):
    def run(*cases):
        answer = subprocess.run(
            [node, str(HARNESS)],
            input=json.dumps({"source": str(FUNCTION), "cases": list(cases)}),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert answer.returncode == 0, answer.stderr
        results = json.loads(answer.stdout)
        for result in results:
            assert "error" not in result, result["error"]
        return results

    return run


def case(uri, kvs=None, querystring=None):
    """One viewer request; ``kvs`` is the store's table (default: only ``live``)."""
    return {"uri": uri, "kvs": {"live": LIVE} if kvs is None else kvs, "querystring": querystring or {}}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/", f"/releases/{LIVE}/index.html"),
        ("/about/", f"/releases/{LIVE}/about/index.html"),
        ("/docs/guide/intro/", f"/releases/{LIVE}/docs/guide/intro/index.html"),
        ("/page/2/", f"/releases/{LIVE}/page/2/index.html"),
        ("/sitemap.xml", f"/releases/{LIVE}/sitemap.xml"),
        ("/robots.txt", f"/releases/{LIVE}/robots.txt"),
        ("/about/index.html", f"/releases/{LIVE}/about/index.html"),
        ("/assets/3f2a9c0d11aa22bb/site.css", "/assets/3f2a9c0d11aa22bb/site.css"),
        ("/caf%C3%A9/", f"/releases/{LIVE}/caf%C3%A9/index.html"),
    ],
)
def test_uris_map_to_the_live_release(run, uri, expected):
    [result] = run(case(uri))
    assert result["result"]["uri"] == expected
    assert "statusCode" not in result["result"]


@pytest.mark.parametrize("prefix", ["site", "site/", "/site/"])
def test_the_prefix_key_goes_before_releases_and_assets(run, prefix):
    page, asset = run(
        case("/about/", kvs={"live": LIVE, "prefix": prefix}),
        case("/assets/ab12/site.css", kvs={"live": LIVE, "prefix": prefix}),
    )
    assert page["result"]["uri"] == f"/site/releases/{LIVE}/about/index.html"
    assert asset["result"]["uri"] == "/site/assets/ab12/site.css"


def test_a_nested_prefix_and_an_empty_one(run):
    nested, empty = run(
        case("/", kvs={"live": LIVE, "prefix": "sites/www"}), case("/", kvs={"live": LIVE, "prefix": ""})
    )
    assert nested["result"]["uri"] == f"/sites/www/releases/{LIVE}/index.html"
    assert empty["result"]["uri"] == f"/releases/{LIVE}/index.html"


def test_the_query_string_is_kept(run):
    querystring = {"utm_source": {"value": "mail"}, "q": {"value": "a%20b"}}
    [result] = run(case("/about/", querystring=querystring))
    assert result["result"]["uri"] == f"/releases/{LIVE}/about/index.html"
    assert result["result"]["querystring"] == querystring


@pytest.mark.parametrize(
    ("uri", "querystring", "location"),
    [
        ("/about", {}, "/about/"),
        ("/docs/guide", {}, "/docs/guide/"),
        ("/page/2", {}, "/page/2/"),
        ("/about", {"a": {"value": "1"}, "flag": {"value": ""}}, "/about/?a=1&flag"),
        ("/about", {"t": {"value": "1", "multiValue": [{"value": "1"}, {"value": "2"}]}}, "/about/?t=1&t=2"),
    ],
)
def test_a_page_without_its_trailing_slash_is_redirected(run, uri, querystring, location):
    """Page links are relative, so a page is only served at its folder's URL (``/about/``)."""
    [result] = run(case(uri, querystring=querystring))
    response = result["result"]
    assert response["statusCode"] == 301
    assert response["headers"]["location"] == {"value": location}
    assert result["reads"] == []  # no KVS read for a redirect


@pytest.mark.parametrize(
    "uri", ["/../manifests/x.json", "/a/../../live.json", "/a/..", "/a/%2e%2e/b.html", "/./x.html", "/a%2F..%2Fb/"]
)
def test_dot_segments_are_refused(run, uri):
    [result] = run(case(uri))
    assert result["result"]["statusCode"] == 400
    assert result["reads"] == []


def test_a_malformed_escape_is_refused(run):
    [result] = run(case("/%E0%A4%A/"))
    assert result["result"]["statusCode"] == 400


@pytest.mark.parametrize("uri", ["/", "/about/", "/assets/ab12/site.css"])
def test_a_kvs_failure_answers_503(run, uri):
    [result] = run({"uri": uri, "kvs": None, "querystring": {}})
    response = result["result"]
    assert response["statusCode"] == 503
    assert response["headers"]["cache-control"] == {"value": "no-store"}
    assert "uri" not in response


@pytest.mark.parametrize(
    "kvs",
    [
        {},  # no live key yet: never guess
        {"live": "../manifests"},
        {"live": "latest"},
        {"live": f"{LIVE}/../x"},
        {"live": LIVE, "prefix": "../other"},
        {"live": LIVE, "prefix": "a b"},
    ],
)
def test_a_missing_or_malformed_value_answers_503(run, kvs):
    [result] = run(case("/", kvs=kvs))
    assert result["result"]["statusCode"] == 503


def test_a_new_pointer_value_changes_the_prefix_of_the_next_request(run):
    before, after, back = run(
        case("/about/", kvs={"live": LIVE}), case("/about/", kvs={"live": NEXT}), case("/about/", kvs={"live": LIVE})
    )
    assert before["result"]["uri"] == f"/releases/{LIVE}/about/index.html"
    assert after["result"]["uri"] == f"/releases/{NEXT}/about/index.html"
    assert back["result"]["uri"] == f"/releases/{LIVE}/about/index.html"


def test_the_function_reads_live_then_the_optional_prefix(run):
    without, with_prefix = run(case("/"), case("/", kvs={"live": LIVE, "prefix": "site"}))
    assert without["reads"] == ["live", "exists:prefix"]
    assert with_prefix["reads"] == ["live", "exists:prefix", "prefix"]


def test_the_function_fits_cloudfront_functions_limits():
    source = FUNCTION.read_text()
    assert len(source.encode()) < 10 * 1024  # the maximum function size
    assert source.count("import ") == 1 and "import cf from 'cloudfront';" in source
    assert "const kvsHandle = cf.kvs();" in source
    for forbidden in ("fetch(", "require(", "XMLHttpRequest", "export "):
        assert forbidden not in source


# --- the KVS write ---------------------------------------------------------------------------------------------


@pytest.fixture
def kvs():
    store = KeyValueStore(arn=ARN, region="us-east-1")
    with Stubber(store.client) as stubber:
        store.stubber = stubber
        yield store
        stubber.assert_no_pending_responses()


def describe(etag="ETAG1"):
    created = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    return {"ItemCount": 1, "TotalSizeInBytes": 30, "KvsARN": ARN, "Created": created, "ETag": etag}


def test_put_live_reads_the_etag_then_writes_the_key_if_it_matches(kvs):
    kvs.stubber.add_response("describe_key_value_store", describe("ETAG1"), {"KvsARN": ARN})
    kvs.stubber.add_response(
        "put_key",
        {"ItemCount": 1, "TotalSizeInBytes": 30, "ETag": "ETAG2"},
        {"KvsARN": ARN, "Key": "live", "Value": NEXT, "IfMatch": "ETAG1"},
    )
    assert kvs.put_live(NEXT) == "ETAG2"


def test_put_live_refuses_a_value_that_is_not_a_release_name(kvs):
    with pytest.raises(ValueError):
        kvs.put_live("../x")


def test_a_lost_race_is_pointer_moved(kvs):
    kvs.stubber.add_response("describe_key_value_store", describe("ETAG1"), {"KvsARN": ARN})
    kvs.stubber.add_client_error(
        "put_key",
        service_error_code="ConflictException",
        service_message="The ETag does not match",
        http_status_code=409,
        response_meta={"RequestId": "req-409"},
    )
    with pytest.raises(PointerMoved) as caught:
        kvs.put_live(NEXT)
    assert caught.value.code == "ConflictException"
    assert caught.value.request_id == "req-409"


@pytest.mark.parametrize("operation", ["describe_key_value_store", "put_key"])
def test_an_error_is_a_destination_error_with_code_and_request_id(kvs, operation):
    if operation == "put_key":
        kvs.stubber.add_response("describe_key_value_store", describe(), {"KvsARN": ARN})
    kvs.stubber.add_client_error(
        operation,
        service_error_code="AccessDeniedException",
        service_message="User is not authorized to perform cloudfront-keyvaluestore:PutKey",
        http_status_code=403,
        response_meta={"RequestId": "req-403"},
    )
    with pytest.raises(DestinationError) as caught:
        kvs.put_live(NEXT)
    error = caught.value
    assert type(error) is DestinationError
    assert (error.code, error.request_id, error.retryable) == ("AccessDeniedException", "req-403", False)
    assert ARN in str(error) and "req-403" in str(error)


def test_a_server_error_is_retryable(kvs):
    kvs.stubber.add_client_error(
        "describe_key_value_store",
        service_error_code="InternalServerException",
        http_status_code=500,
        response_meta={"RequestId": "req-500"},
    )
    with pytest.raises(DestinationError) as caught:
        kvs.put_live(NEXT)
    assert (caught.value.code, caught.value.retryable) == ("InternalServerException", True)


def test_get_live_reads_the_key(kvs):
    kvs.stubber.add_response(
        "get_key",
        {"Key": "live", "Value": LIVE, "ItemCount": 1, "TotalSizeInBytes": 30},
        {"KvsARN": ARN, "Key": "live"},
    )
    assert kvs.get_live() == LIVE


def test_get_live_is_none_when_the_key_is_missing(kvs):
    kvs.stubber.add_client_error("get_key", service_error_code="ResourceNotFoundException", http_status_code=404)
    kvs.stubber.add_response("describe_key_value_store", describe(), {"KvsARN": ARN})
    assert kvs.get_live() is None


def test_get_live_fails_when_the_store_is_missing(kvs):
    kvs.stubber.add_client_error("get_key", service_error_code="ResourceNotFoundException", http_status_code=404)
    kvs.stubber.add_client_error(
        "describe_key_value_store",
        service_error_code="ResourceNotFoundException",
        http_status_code=404,
        response_meta={"RequestId": "req-404"},
    )
    with pytest.raises(DestinationError) as caught:
        kvs.get_live()
    assert (caught.value.code, caught.value.request_id) == ("ResourceNotFoundException", "req-404")


def test_the_client_has_the_timeouts_and_standard_retries():
    store = KeyValueStore(arn=ARN, connect_timeout=3, read_timeout=7)
    config = store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 7)
    assert config.retries["mode"] == "standard"
    assert store.client.meta.region_name == "us-east-1"
    assert store.client is store.client


def test_without_awscrt_the_error_says_what_to_install(tmp_path):
    """The KVS API is signed with SigV4A, which botocore only does with awscrt: without it, one clear error."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["awscrt"] = None  # as if it were not installed
        from publisher.destinations.cloudfront import KeyValueStore
        from publisher.destinations.base import DestinationError
        try:
            KeyValueStore(arn={ARN!r}).get_live()
        except DestinationError as exc:
            print(exc.code, exc.retryable, exc)
        """
    )
    answer = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("MissingDependency False ")
    assert "botocore[crt]" in answer.stdout


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (ARN, True),
        ("arn:aws:cloudfront::123456789012:key-value-store/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", True),
        ("arn:aws:cloudfront::12345678901:key-value-store/a1b2c3d4-5678-90ab-cdef-EXAMPLE11111", False),
        ("arn:aws:cloudfront::123456789012:key-value-store/my-store", False),
        ("arn:aws:cloudfront::123456789012:distribution/EDFDVBD6EXAMPLE", False),
        ("arn:aws:cloudfront:us-east-1:123456789012:key-value-store/a1b2c3d4-5678-90ab-cdef-EXAMPLE11111", False),
        (" " + ARN, False),
        (ARN + "\n", False),
        ("", False),
        (None, False),
    ],
)
def test_valid_kvs_arn(text, valid):
    assert valid_kvs_arn(text) is valid
