"""Run each build in a detached one-off Heroku dyno (DESIGN §4).

One launch is exactly one request, ``POST /apps/{app}/dynos``: no key verification, no app lookup. heroku3 is the
client (session set-up, URLs, JSON, its errors); the request body is ours because its ``run_command_detached``
cannot send ``type`` or ``time_to_live`` and sends ``size: null``, which the Platform API schema rejects.

Relies on heroku3 internals, checked against heroku3==5.2.1 (pinned in requirements.txt): ``Heroku._heroku_url``,
``Heroku._http_resource`` (calls ``session.request`` without a timeout, raises ``requests.HTTPError`` with the
response for 4xx/5xx and ``RateLimitExceeded`` *without* it for 429), ``Heroku._resource_serialize`` and
``_resource_deserialize``. Re-check them before upgrading heroku3.
"""

import contextvars
import io
import logging
import re
import shlex
import socket
import time
from urllib.parse import quote, urlsplit

import requests
from django.core import checks
from heroku3.api import Heroku, RateLimitExceeded, ResponseError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..health import Finding, Level
from .base import GONE, RUNNING, STARTING, UNKNOWN, BaseLauncher, LaunchError, redact

logger = logging.getLogger(__name__)

ACCEPT = "application/vnd.heroku+json; version=3"
MAX_TIME_TO_LIVE = 86400  # Heroku's limit for a one-off dyno, in seconds
TIME_TO_LIVE_MARGIN = 300  # the sweep stops a build at BUILD_TIMEOUT; Heroku's own limit comes a little later

#: 422 error ids that mean "too many dynos right now": waiting helps, no operator needed.
DYNO_LIMIT_ERROR_IDS = frozenset({"cannot_run_above_limit"})

#: Apps built with Cloud Native Buildpacks: their stack is ``cnb`` (Heroku's CLI prepends ``launcher`` to
#: ``heroku run`` commands exactly then), their generation ``fir``. Their dynos find python only through ``launcher``.
CNB_STACKS = frozenset({"cnb"})
CNB_GENERATIONS = frozenset({"fir"})
CNB_LAUNCHER = "launcher"

DYNO_STATES = {"starting": STARTING, "up": RUNNING, "crashed": GONE, "down": GONE}

NEW_TOKEN_HINT = (
    "Create a new token with `heroku authorizations:create` and set it as HEROKU_API_KEY "
    "(on Heroku: `heroku config:set HEROKU_API_KEY=...`)."
)

E010 = "publisher.E010"  # no API key
E011 = "publisher.E011"  # no app name
E012 = "publisher.E012"  # BUILD_TIMEOUT outside 1..86400
E013 = "publisher.E013"  # a timeout is not a positive number
E014 = "publisher.E014"  # API URL is not an http(s) URL
E015 = "publisher.E015"  # the total deadline is shorter than connect + read timeouts


class Secret:
    """A string that hides itself from ``str``, ``repr`` and formatting; ``reveal()`` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value.reveal() if isinstance(value, Secret) else str(value or "")

    def reveal(self):
        return self._value

    def __bool__(self):
        return bool(self._value)

    def __repr__(self):
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <key>``; set as ``session.auth`` so requests never falls back to ``~/.netrc``."""

    def __init__(self, key):
        self._key = key

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return request

    def __repr__(self):
        return "<BearerAuth ********>"


# --- A total deadline on every API call ------------------------------------------------------------------------
#
# requests' timeouts bound each socket operation, not a call: a server that sends one byte a second holds a call for
# as long as it likes. So every socket of the launcher's sessions is wrapped (``_DeadlineSocket``): before each send
# and each receive, the call's deadline is looked up and the operation's timeout shrunk to the time left, and past
# the deadline the operation fails at once. That bounds the status line, the headers and the body alike, with no
# thread per call. The deadline of the call under way is in a context variable, set by ``TimeoutSession.request``.


class TotalTimeout(requests.Timeout):
    """An API call ran past its total deadline (``HEROKU_TOTAL_TIMEOUT``)."""


class _Deadline:
    def __init__(self, seconds):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.passed = False

    def time_left(self):
        """Seconds left; past the deadline a ``socket.timeout`` (what a socket operation raises on its timeout)."""
        left = self.at - time.monotonic()
        if left <= 0:
            self.passed = True
            raise TimeoutError(f"the total deadline of {self.seconds}s passed")
        return left


_call_deadline = contextvars.ContextVar("publisher_heroku_call_deadline", default=None)


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose every send and receive waits at most until the call's deadline,
    and at most the timeout urllib3 set (the read timeout). Everything else is the socket's own."""

    def __init__(self, sock):
        object.__setattr__(self, "_sock", sock)
        object.__setattr__(self, "_timeout", sock.gettimeout())

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def settimeout(self, value):
        object.__setattr__(self, "_timeout", value)
        self._sock.settimeout(value)

    def gettimeout(self):
        return self._timeout

    def _arm(self):
        deadline = _call_deadline.get()
        if deadline is None:
            return
        left = deadline.time_left()
        self._sock.settimeout(left if self._timeout is None else min(self._timeout, left))

    def recv_into(self, *args, **kwargs):
        self._arm()
        return self._sock.recv_into(*args, **kwargs)

    def recv(self, *args, **kwargs):
        self._arm()
        return self._sock.recv(*args, **kwargs)

    def send(self, *args, **kwargs):
        self._arm()
        return self._sock.send(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._arm()
        return self._sock.sendall(*args, **kwargs)

    def makefile(self, mode="r", buffering=None, **kwargs):
        """The reader ``http.client`` parses the response from: its reads come back through ``recv_into``."""
        if mode != "rb":
            return self._sock.makefile(mode, buffering, **kwargs)
        self._sock._io_refs += 1  # as socket.makefile does; SocketIO.close() gives it back
        return io.BufferedReader(socket.SocketIO(self, "rb"), io.DEFAULT_BUFFER_SIZE)


class _DeadlineHTTPConnection(HTTPConnection):
    def connect(self):
        super().connect()
        self.sock = _DeadlineSocket(self.sock)


class _DeadlineHTTPSConnection(HTTPSConnection):
    def connect(self):
        super().connect()
        self.sock = _DeadlineSocket(self.sock)


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections whose sockets keep the call's deadline (directly or through a proxy)."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_DEADLINE_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_DEADLINE_POOLS)
        return manager


class TimeoutSession(requests.Session):
    """A session that gives every request a timeout (heroku3 passes none): ``timeout`` (connect, read) for each
    socket operation, and ``total`` seconds for the whole call, sending, waiting and reading the answer included.
    A call past ``total`` raises ``TotalTimeout``."""

    def __init__(self, timeout, total=None):
        super().__init__()
        self.timeout = timeout
        self.total = total
        adapter = _DeadlineAdapter()
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        if not self.total:
            return super().request(method, url, **kwargs)
        deadline = _Deadline(self.total)
        token = _call_deadline.set(deadline)
        try:
            return super().request(method, url, **kwargs)
        except requests.RequestException:
            if deadline.passed or time.monotonic() >= deadline.at:
                raise TotalTimeout(f"the answer was still incomplete after {self.total}s") from None
            raise
        finally:
            _call_deadline.reset(token)


class HerokuLauncher(BaseLauncher):
    """Starts ``[COMMAND_PREFIX] python manage.py buildstaticsite --build ID`` in a one-off dyno.

    The launch token goes in the dyno's ``env``, never its command: Heroku shows commands in the app's log, the
    dashboard and ``GET /apps/{app}/dynos``.
    """

    name = "heroku"
    option_defaults = {
        "API_KEY": "",
        "APP_NAME": "",
        "API_URL": "https://api.heroku.com",
        "DYNO_SIZE": "",
        "COMMAND_PREFIX": "",
        "CONNECT_TIMEOUT": 5,
        "READ_TIMEOUT": 15,
        "TOTAL_TIMEOUT": 30,
    }

    def __init__(self, **options):
        super().__init__(**options)
        self.options["API_KEY"] = Secret(self.options["API_KEY"])

    def __repr__(self):
        return f"<{type(self).__name__} app={self.app_name!r}>"

    @property
    def app_name(self):
        return self.options["APP_NAME"] or ""

    # --- the contract ---------------------------------------------------------------------------------------

    def launch(self, *, build_id, token):
        self._require_configuration()
        body = self.dyno_request(build_id=build_id, token=token)
        dyno = self._request("launch", "POST", ("apps", self.app_name, "dynos"), body=body)
        dyno = dyno if isinstance(dyno, dict) else {}
        if not isinstance(dyno.get("id"), str) or not dyno["id"]:
            raise LaunchError(
                f"Heroku accepted the launch of build {build_id} but its answer names no dyno.",
                retryable=True,
            )
        name = dyno.get("name") if isinstance(dyno.get("name"), str) else ""
        handle = {"app": self.app_name, "dyno_id": dyno["id"], "dyno_name": name}
        logger.info("Launched build %s on Heroku app %s as dyno %s", build_id, self.app_name, self.describe(handle))
        return handle

    def status(self, handle):
        self._require_configuration()
        dyno = self._request("status", "GET", self._dyno_path(handle), dyno_may_be_gone=True)
        if dyno is None:
            return GONE  # Heroku removes a one-off dyno once it has exited
        state = dyno.get("state") if isinstance(dyno, dict) else None
        return DYNO_STATES.get(state, UNKNOWN)

    def stop(self, handle):
        self._require_configuration()
        if self._request("stop", "POST", (*self._dyno_path(handle), "actions", "stop"), dyno_may_be_gone=True) is None:
            logger.info("Dyno %s was already gone", self.describe(handle))
        else:
            logger.info("Asked Heroku to stop dyno %s", self.describe(handle))

    def check(self):
        errors = []
        if not self.options["API_KEY"]:
            errors.append(
                checks.Error(
                    "The Heroku launcher has no API key.",
                    hint=f"Set HEROKU_API_KEY. {NEW_TOKEN_HINT}",
                    id=E010,
                )
            )
        if not self.app_name:
            errors.append(
                checks.Error(
                    "The Heroku launcher has no app name.",
                    hint="Set HEROKU_APP_NAME to the app whose dynos run builds.",
                    id=E011,
                )
            )
        timeout = self.config.BUILD_TIMEOUT
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= MAX_TIME_TO_LIVE:
            errors.append(
                checks.Error(
                    f"BUILD_TIMEOUT is {timeout!r}; the Heroku launcher needs 1..{MAX_TIME_TO_LIVE} seconds.",
                    hint="A one-off dyno lives at most 24 hours.",
                    id=E012,
                )
            )
        timeouts = {}
        for name in ("CONNECT_TIMEOUT", "READ_TIMEOUT", "TOTAL_TIMEOUT"):
            value = self.options[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                errors.append(
                    checks.Error(
                        f"HEROKU_{name} is {value!r}; it must be a positive number of seconds.",
                        id=E013,
                    )
                )
            else:
                timeouts[name] = value
        if len(timeouts) == 3 and timeouts["TOTAL_TIMEOUT"] < timeouts["CONNECT_TIMEOUT"] + timeouts["READ_TIMEOUT"]:
            errors.append(
                checks.Error(
                    f"HEROKU_TOTAL_TIMEOUT is {timeouts['TOTAL_TIMEOUT']}s, shorter than HEROKU_CONNECT_TIMEOUT + "
                    f"HEROKU_READ_TIMEOUT ({timeouts['CONNECT_TIMEOUT'] + timeouts['READ_TIMEOUT']}s): a call could "
                    "be cut off before a timeout it was promised.",
                    hint="Raise HEROKU_TOTAL_TIMEOUT (default 30) or lower the other two (defaults 5 and 15).",
                    id=E015,
                )
            )
        url = urlsplit(str(self.options["API_URL"] or ""))
        if url.scheme not in ("http", "https") or not url.hostname:
            errors.append(
                checks.Error(
                    "HEROKU_API_URL is not an http(s) URL.",
                    hint="Leave it unset for https://api.heroku.com.",
                    id=E014,
                )
            )
        return errors

    def diagnose(self):
        """The doctor's questions to Heroku, through the same session as every launch (timeouts, key, redaction):
        ``GET /apps/{app}`` (is the key accepted, does the app exist, does ``COMMAND_PREFIX`` fit its stack), then
        ``GET /apps/{app}/formation`` (its dyno tier, for the one-off dyno limit). Starts nothing."""
        missing = [f"HEROKU_{name}" for name in ("API_KEY", "APP_NAME") if not self.options[name]]
        if missing:
            return [
                Finding(
                    Level.FAIL,
                    f"Heroku was not asked: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set.",
                    f"Set {' and '.join(missing)} (see publisher.E010 and publisher.E011).",
                )
            ]
        app = self.app_name
        try:
            info = self._request("diagnose", "GET", ("apps", app))
        except LaunchError as exc:
            return [self._unreachable_finding(exc)]
        info = info if isinstance(info, dict) else {}
        found = [Finding(Level.OK, f"Heroku accepts the API key, and the app {app!r} exists{_where(info)}.")]
        found += self._stack_findings(info)
        try:
            formation = self._request("diagnose", "GET", ("apps", app, "formation"))
        except LaunchError as exc:
            found.append(
                Finding(
                    Level.WARN,
                    f"Heroku did not say which dynos the app runs, so its one-off dyno limit is unknown: {exc}",
                )
            )
        else:
            found.append(self._limit_finding(formation if isinstance(formation, list) else []))
        return found

    def _unreachable_finding(self, exc):
        """The finding for a failed ``GET /apps/{app}``: what Heroku said, in words, and what to do."""
        app = self.app_name
        if exc.status == 401:
            return Finding(
                Level.FAIL, f"Heroku rejected the API key (HTTP 401, {exc.error_id or 'unauthorized'}).", NEW_TOKEN_HINT
            )
        if exc.status == 403:
            return Finding(
                Level.FAIL,
                f"Heroku accepts the API key but refuses it access to the app {app!r} (HTTP 403, "
                f"{exc.error_id or 'forbidden'}).",
                f"Use a key of an account that is a member or collaborator of {app!r}. {NEW_TOKEN_HINT}",
            )
        if exc.status == 404:
            return Finding(
                Level.FAIL,
                f"Heroku has no app {app!r} that this key can see (HTTP 404).",
                "Check HEROKU_APP_NAME against `heroku apps`, and that the key's account can see the app.",
            )
        return Finding(
            Level.FAIL,
            f"Heroku could not be asked about the app {app!r}: {exc}",
            "Try again; if it persists, check HEROKU_API_URL, the network, and https://status.heroku.com.",
        )

    def _stack_findings(self, info):
        """Whether ``COMMAND_PREFIX`` fits the app's stack: apps built with Cloud Native Buildpacks (stack ``cnb``,
        the Fir generation) find ``python`` only through ``launcher``; classic-buildpack apps have no ``launcher``.
        Heroku's CLI decides the same way (``heroku run`` prepends ``launcher`` when the stack is ``cnb``)."""
        app = self.app_name
        stack = _name(info.get("stack"))
        build_stack = _name(info.get("build_stack"))
        generation = _name(info.get("generation"))
        if not stack:
            return [
                Finding(
                    Level.WARN,
                    f"Heroku's answer names no stack for {app!r}, so whether HEROKU_COMMAND_PREFIX fits cannot be "
                    "told.",
                    "Look at `heroku apps:info` and `heroku stack`; apps on Cloud Native Buildpacks need "
                    "HEROKU_COMMAND_PREFIX=launcher.",
                )
            ]
        found = [self._prefix_finding(stack, generation, upcoming=False)]
        if build_stack and build_stack != stack:
            later = self._prefix_finding(build_stack, generation, upcoming=True)
            if later.level is not Level.OK:
                found.append(later)
        return found

    def _prefix_finding(self, stack, generation, *, upcoming):
        app = self.app_name
        prefix = (self.options["COMMAND_PREFIX"] or "").strip()
        words = shlex.split(prefix) if prefix else []
        has_launcher = words[:1] == [CNB_LAUNCHER]
        cnb = stack in CNB_STACKS or generation in CNB_GENERATIONS
        kind = "Cloud Native Buildpacks" if cnb else "classic buildpacks"
        which = f"After its next build the app {app!r} is on" if upcoming else f"The app {app!r} is on"
        said = f"HEROKU_COMMAND_PREFIX is {prefix!r}" if prefix else "HEROKU_COMMAND_PREFIX is empty"
        if cnb and not has_launcher:
            return Finding(
                Level.FAIL,
                f"{which} the stack {stack!r} ({kind}), where a one-off dyno finds python only through "
                f"`{CNB_LAUNCHER}`, and {said}: every build would end with 'python: command not found'.",
                f"Set HEROKU_COMMAND_PREFIX={CNB_LAUNCHER}.",
            )
        if has_launcher and not cnb:
            return Finding(
                Level.FAIL,
                f"{which} the stack {stack!r} ({kind}), which has no `{CNB_LAUNCHER}` command, and {said}: every "
                f"build would end with '{CNB_LAUNCHER}: command not found'.",
                "Unset HEROKU_COMMAND_PREFIX (`heroku config:unset HEROKU_COMMAND_PREFIX`).",
            )
        return Finding(Level.OK, f"{which} the stack {stack!r} ({kind}), and {said}: that fits.")

    def _limit_finding(self, formation):
        """The one-off dyno limit: Heroku's API does not report it, so say so, with the tier the app's dynos are on
        (read from its formation) and what happens when a launch is above the limit."""
        running = [
            f"{item.get('type')} {item.get('quantity')}× {item.get('size')}"
            for item in formation
            if isinstance(item, dict) and item.get("quantity")
        ]
        tiers = sorted(
            {str(item.get("size") or "").split("-")[0].lower() for item in formation if isinstance(item, dict)} - {""}
        )
        dynos = f"the app runs {', '.join(running)}" if running else "the app runs no formation dynos"
        tier = f" ({'/'.join(tiers)} tier)" if tiers else ""
        text = f"Heroku's API does not report the limit on concurrent one-off dynos; {dynos}{tier}."
        if "eco" in tiers:
            return Finding(Level.WARN, text, self._hint(422, next(iter(DYNO_LIMIT_ERROR_IDS))))
        return Finding(
            Level.OK,
            text,
            "A launch above the limit (HTTP 422 cannot_run_above_limit) waits and is retried; Heroku's limits are at "
            "https://devcenter.heroku.com/articles/limits.",
        )

    def describe(self, handle):
        handle = handle if isinstance(handle, dict) else {}
        return handle.get("dyno_name") or handle.get("dyno_id") or "?"

    def this_process(self):
        """``{"app", "dyno_name"}`` from ``$DYNO`` (``run.4821``), which the API accepts in place of the dyno id."""
        dyno = self.config.DYNO
        return {"app": self.app_name, "dyno_name": dyno} if dyno else None

    def not_started_hint(self, handle):
        dyno = self.describe(handle)
        logs = f"heroku logs --app {self.app_name or 'APP'} --dyno {dyno if dyno != '?' else 'run'}"
        return (
            f"The dyno ended before it started building. Its output: `{logs}`. Common causes: "
            "'python: command not found' on an app built with Cloud Native Buildpacks (set "
            "HEROKU_COMMAND_PREFIX=launcher), a slug that crashes at boot, or a missing release."
        )

    # --- the request ----------------------------------------------------------------------------------------

    def command(self, *, build_id):
        """The dyno's command line: the optional prefix, then the build command quoted for the dyno's shell."""
        command = shlex.join(["python", *self.build_arguments(build_id=build_id)])
        prefix = (self.options["COMMAND_PREFIX"] or "").strip()
        return f"{prefix} {command}" if prefix else command

    def dyno_request(self, *, build_id, token):
        """The body of ``POST /apps/{app}/dynos``; ``size`` only when configured, never ``null``."""
        body = {
            "command": self.command(build_id=build_id),
            "attach": False,
            "type": "run",
            "time_to_live": min(int(self.config.BUILD_TIMEOUT) + TIME_TO_LIVE_MARGIN, MAX_TIME_TO_LIVE),
            "env": {"PUBLISHER_BUILD_ID": str(int(build_id)), **self.build_environment(token=token)},
        }
        if self.options["DYNO_SIZE"]:
            body["size"] = str(self.options["DYNO_SIZE"])
        return body

    def _require_configuration(self):
        missing = [name for name in ("API_KEY", "APP_NAME") if not self.options[name]]
        if missing:
            raise LaunchError(
                f"The Heroku launcher is not configured: set {' and '.join(f'HEROKU_{n}' for n in missing)}.",
                retryable=False,
                needs_operator=True,
            )

    def _dyno_path(self, handle):
        dyno = (handle.get("dyno_id") or handle.get("dyno_name")) if isinstance(handle, dict) else None
        if not isinstance(dyno, str) or not dyno:
            raise LaunchError(f"{handle!r} is not a Heroku launcher handle (no dyno id or name).", retryable=False)
        return ("apps", handle.get("app") or self.app_name, "dynos", dyno)

    def _client(self):
        """A heroku3 client on a fresh session; also returns the list of responses it receives."""
        session = TimeoutSession(
            (self.options["CONNECT_TIMEOUT"], self.options["READ_TIMEOUT"]), total=self.options["TOTAL_TIMEOUT"]
        )
        client = Heroku(session=session)  # not heroku3.from_key(): that sends a key-verification request
        client._heroku_url = str(self.options["API_URL"]).rstrip("/")
        session.headers["Accept"] = ACCEPT  # heroku3 asks for "version=3.cedar-acm"
        session.auth = BearerAuth(self.options["API_KEY"])
        received = []
        session.hooks["response"].append(lambda response, *args, **kwargs: received.append(response))
        return client, received

    def _request(self, action, method, path, *, body=None, dyno_may_be_gone=False):
        """One API call; its decoded JSON answer, or ``LaunchError`` with the API key blanked out of every text.

        With ``dyno_may_be_gone``, a 404 about the dyno (not the app) returns ``None``.
        """
        try:
            return self._call(action, method, path, body=body, dyno_may_be_gone=dyno_may_be_gone)
        except LaunchError as exc:
            raise exc.redacted(self._secrets()) from None

    def _secrets(self):
        """What must never appear in a message: the key, and the header a proxy might echo."""
        key = self.options["API_KEY"].reveal()
        return (f"Bearer {key}", key) if key else ()

    def _call(self, action, method, path, *, body, dyno_may_be_gone):
        client, received = self._client()
        resource = [quote(str(part), safe="") for part in path]
        data = client._resource_serialize(body) if body is not None else None
        try:
            response = client._http_resource(method=method, resource=resource, data=data)
        except requests.HTTPError as exc:
            response = exc.response if exc.response is not None else (received[-1] if received else None)
            failure = self._failure(action, response)
            if dyno_may_be_gone and failure.status == 404 and not self._names_app(failure.platform_message):
                return None
            self._log(action, failure)
            raise failure from None
        except RateLimitExceeded:
            failure = self._failure(action, received[-1] if received else None, status=429)
            self._log(action, failure)
            raise failure from None
        # ``from None``: a requests exception holds the prepared request, Authorization header included.
        except TotalTimeout as exc:
            what = f"did not answer within HEROKU_TOTAL_TIMEOUT ({self.options['TOTAL_TIMEOUT']}s)"
            raise self._unreachable(action, exc, what) from None
        except requests.Timeout as exc:
            raise self._unreachable(action, exc, "did not answer in time") from None
        except requests.ConnectionError as exc:
            raise self._unreachable(action, exc, "could not be reached") from None
        except requests.RequestException as exc:
            raise self._unreachable(action, exc, "could not be called") from None
        if not response.content:
            return {}
        try:
            return client._resource_deserialize(response.content.decode("utf-8", "replace"))
        except ResponseError:
            raise LaunchError(
                f"Heroku {action} returned HTTP {response.status_code} with a body that is not JSON.",
                status=response.status_code,
                request_id=response.headers.get("Request-Id"),
                retryable=True,
            ) from None

    def _unreachable(self, action, exc, what):
        host = urlsplit(str(self.options["API_URL"])).hostname or "?"
        detail = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, self._secrets())
        detail = detail if len(detail) <= 300 else f"{detail[:297]}..."
        logger.warning("Heroku %s: the API at %s %s (%s)", action, host, what, detail)
        return LaunchError(f"Heroku {action} failed: the API at {host} {what} ({detail}).")

    def _failure(self, action, response, *, status=None):
        """A ``LaunchError`` from an error response: status, Heroku's ``id`` and ``message``, the request id."""
        status = response.status_code if response is not None else status
        error_id = platform_message = request_id = None
        payload = None
        if response is not None:
            request_id = response.headers.get("Request-Id")
            try:
                payload = response.json()
            except ValueError:
                payload = None
        if isinstance(payload, dict):
            error_id = payload.get("id") if isinstance(payload.get("id"), str) else None
            platform_message = payload.get("message") if isinstance(payload.get("message"), str) else None
        secrets = self._secrets()
        error_id, platform_message, request_id = (redact(v, secrets) for v in (error_id, platform_message, request_id))
        retryable, needs_operator, advice = self._classify(status, error_id)
        said = f"{error_id}: {platform_message}" if error_id or platform_message else "no error details"
        # A dyno-limit refusal names the limit and the size it counted ({"limit": 1, "size": "Eco"}).
        fields = payload if isinstance(payload, dict) else {}
        limits = [f"{name} {fields[name]}" for name in ("limit", "size") if type(fields.get(name)) in (int, str)]
        if limits:
            said += f"; {redact(', '.join(limits), secrets)}"
        message = f"Heroku {action} failed with HTTP {status} ({said}). {advice}"
        if request_id:
            message += f" Heroku request id: {request_id}."
        return LaunchError(
            message,
            hint=self._hint(status, error_id),
            status=status,
            error_id=error_id,
            platform_message=platform_message,
            request_id=request_id,
            retryable=retryable,
            needs_operator=needs_operator,
        )

    @staticmethod
    def _log(action, failure):
        logger.warning(
            "Heroku %s failed: HTTP %s %s (request %s)",
            action,
            failure.status,
            failure.error_id or "-",
            failure.request_id or "-",
        )

    @staticmethod
    def _hint(status, error_id):
        """What to do when this failure keeps coming back, for the report after BUILD_MAX_ATTEMPTS."""
        if status == 422 and error_id in DYNO_LIMIT_ERROR_IDS:
            return (
                "The account's limit on concurrent one-off dynos is reached. An app on Eco dynos may run one one-off "
                "dyno at a time and two dynos in all, so web and worker leave no room for a build: move the app to "
                "Basic or larger dynos, or scale the worker down and run `sweepbuilds` from Heroku Scheduler."
            )
        if status in (401, 403):
            return NEW_TOKEN_HINT
        return ""

    def _classify(self, status, error_id):
        """``(retryable, needs_operator, advice)`` for an error status and Heroku error id."""
        app = self.app_name
        if status in (401, 403):
            return (
                False,
                True,
                f"The API key has expired, been revoked or lacks access to app {app!r}. {NEW_TOKEN_HINT}",
            )
        if status == 404:
            return False, True, f"Heroku has no app {app!r} that this key can see; check HEROKU_APP_NAME."
        if status == 409:
            return True, False, "Heroku reported a conflict; trying again later should help."
        if status == 422:
            if error_id in DYNO_LIMIT_ERROR_IDS:
                return True, False, "The account's dyno limit is reached; the build will be retried."
            return False, True, "Heroku refused the request; an operator must look at the message."
        if status == 429:
            return True, False, "The account's API rate limit is reached; the build will be retried."
        if status is not None and status >= 500:
            return True, False, "Heroku had a server error; the build will be retried."
        return False, True, "Heroku refused the request; an operator must look at the message."

    def _names_app(self, platform_message):
        """Whether a 404 is about the app (a configuration error) rather than the dyno (it has exited).

        Heroku answers ``{"id": "not_found", "message": "Couldn't find that app."}`` for a missing app.
        """
        text = platform_message or ""
        if re.search(r"\bapps?\b", text, re.IGNORECASE):
            return True
        if re.search(r"\b(dyno|process)\b", text, re.IGNORECASE):
            return False
        return bool(self.app_name) and re.search(rf"(?<![\w-]){re.escape(self.app_name)}(?![\w-])", text) is not None


def _name(value):
    """The ``name`` of a nested ``{"id", "name"}`` object in Heroku's answers, or ``""``."""
    name = value.get("name") if isinstance(value, dict) else None
    return name if isinstance(name, str) else ""


def _where(info):
    region = _name(info.get("region"))
    return f" (region {region})" if region else ""
