"""The web console's routes: groups and lag, dead letters by error class with their records, and
replay (and purge: console/purge.py) with a dry-run preview first; the same as JSON under
`<path>/api/` for scripts.

The work is done by :mod:`freedom.ops` (the functions behind `freedom status` and `freedom dlq`),
in worker threads: their Kafka admin calls and reads block, and must not hold up the event loop
that serves the handlers. One replay or purge runs at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from freedom.console import pages
from freedom.console.auth import COOKIE, SESSION_SECONDS, Caller, Keys
from freedom.console.forms import REPLAY_PARAMS, Refused, ReplayArgs, json_fields, replay_args
from freedom.console.purge import Purging, purge_details, purge_section
from freedom.console.running import app_target
from freedom.console.throttle import Busy, GuessThrottle
from freedom.errors import FreedomError
from freedom.observability.metrics import CONSOLE_AUTH_FAILURES, CONSOLE_AUTH_THROTTLED
from freedom.ops.dlq import DeadLetter, Filter, fail_topics, list_dead_letters, scan
from freedom.ops.replay import ReplayReport, audit_line, replay
from freedom.ops.status import status
from freedom.ops.target import OpsError, Target
from freedom.wire.encoding import printable, printable_json

if TYPE_CHECKING:
    from freedom.web.application import Application

log = logging.getLogger("freedom.console")
audit_log = logging.getLogger("freedom.ops.audit")

T = TypeVar("T")
MAX_BODY = 64 * 1024
MAX_RECORDS = 500
DEFAULT_RECORDS = 50
#: The bounds of the overview's auto-refresh, `?refresh=N` seconds (pages.REFRESH_SECONDS offered).
MIN_REFRESH, MAX_REFRESH = 5, 3600
#: Every console page: no script, no frames, nothing sent elsewhere, nothing cached.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer would make the browser send `Origin: null`
    "cache-control": "no-store",
}


def auto_refresh(value: str | None) -> int | None:
    """The overview's `?refresh=N`: reload the page every N seconds (MIN_REFRESH to MAX_REFRESH);
    None (no `refresh`, or empty): no auto-refresh."""
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and MIN_REFRESH <= int(value[:6]) <= MAX_REFRESH):
        raise OpsError(f"refresh: expected {MIN_REFRESH} to {MAX_REFRESH} seconds, got {value!r}")
    return int(value)


def plain(value: Any) -> Any:
    """A report (dataclasses, tuples) as JSON-ready values."""
    return json.loads(
        json.dumps(
            dataclasses.asdict(value)
            if dataclasses.is_dataclass(value) and not isinstance(value, type)
            else value,
            default=str,
        )
    )


class Console:
    """The console of one Application: its token's keys, its routes, its worker threads."""

    def __init__(self, app: Application, token: str, base: str) -> None:
        self.app = app
        self.keys = Keys(token)
        self.base = base
        #: Who the token stands for in a console replay's audit line (app.toml `console_token_label`).
        self.label = app.config.console_token_label
        self._target: Target | None = None
        #: One replay or purge started from the console at a time.
        self.one_job = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None
        #: Wrong tokens (bearer and log-in alike) slowed per client address (throttle.py).
        self.guesses = GuessThrottle()
        for kind in ("bearer", "login"):  # both series in /metrics from the start, at 0
            CONSOLE_AUTH_FAILURES.labels(kind)
            CONSOLE_AUTH_THROTTLED.labels(kind)

    # ------------------------------------------------------------------ plumbing

    @property
    def service(self) -> str:
        return self.app.config.service_name

    def target(self) -> Target:
        """The service's consumer clients (worker threads only: built once, on first use)."""
        if self._target is None:
            self._target = app_target(self.app)
        return self._target

    async def work(self, fn: Callable[[], T]) -> T:
        """Run blocking ops work in a worker thread (at most 4 at once), off the event loop."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(4)
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    def html(
        self,
        title: str,
        body: str,
        caller: Caller | None,
        status: int = 200,
        *,
        refresh: int | None = None,
    ) -> Response:
        csrf = self.keys.csrf(caller.session) if caller is not None and caller.session else None
        text = pages.layout(
            self.base,
            title,
            body,
            csrf=csrf,
            service=self.service,
            nav=caller is not None,
            refresh=refresh,
        )
        return Response(
            text, status, headers=SECURITY_HEADERS, media_type="text/html; charset=utf-8"
        )

    def login_page(self, next_path: str, status: int, problem: str | None = None) -> Response:
        text = pages.login(self.base, next_path, problem, self.service)
        return Response(
            text,
            status,
            headers={**SECURITY_HEADERS, "www-authenticate": 'Bearer realm="freedom console"'},
            media_type="text/html; charset=utf-8",
        )

    @staticmethod
    def json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        """JSON as Starlette's JSONResponse writes it, control and bidirectional characters as
        JSON escapes (`\\u202e`), as `freedom ... --json` prints them."""
        return Response(
            printable_json(value, allow_nan=False, separators=(",", ":")),
            status,
            headers={**SECURITY_HEADERS, **(headers or {})},
            media_type="application/json",
        )

    async def token_checked(self, request: Request, token: str | None, kind: str) -> bool:
        """`token` is the console token, checked under the guessing rule (throttle.py): a right one
        at once; a wrong one (None: not a bearer token at all) counted, and answered once the rule
        allows; Refused(429), unchecked, while too many answers of the address wait."""
        address = request.client.host if request.client else "unknown"

        def wrong() -> None:
            CONSOLE_AUTH_FAILURES.labels(kind).inc()
            if kind == "login":
                log.warning("console: a log-in with a wrong token from %s", address)

        try:
            return await self.guesses.check(
                address, lambda: token is not None and self.keys.token_ok(token), wrong
            )
        except Busy as busy:
            CONSOLE_AUTH_THROTTLED.labels(kind).inc()
            raise Refused(
                429,
                f"too many wrong console tokens from this address: try again in {busy.retry_after} s",
                {"retry-after": str(busy.retry_after)},
            ) from None

    async def authenticate(self, request: Request) -> Caller | None:
        """The caller, None without credentials; Refused(403) for a wrong bearer token (once the
        guessing rule allows the answer), Refused(429) while too many of its address's wait."""
        address = request.client.host if request.client else "unknown"
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
            if not await self.token_checked(request, presented, "bearer"):
                raise Refused(403, "wrong console token (Authorization: Bearer <console_token>)")
            return Caller("bearer", None, address)
        session = request.cookies.get(COOKIE)
        if session and self.keys.session_ok(session):
            return Caller("session", session, address)
        return None

    @staticmethod
    def same_origin(request: Request) -> None:
        """Refused(403) for a POST another site's page sent (its Origin, or the browser's Sec-Fetch-Site)."""
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin != f"{request.url.scheme}://{host}":
            raise Refused(403, "cross-site request refused")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise Refused(403, "cross-site request refused")

    @staticmethod
    async def body(request: Request) -> bytes:
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > MAX_BODY:
            raise Refused(413, f"request body over {MAX_BODY} bytes")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_BODY:
                raise Refused(413, f"request body over {MAX_BODY} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def form(self, request: Request, caller: Caller | None) -> dict[str, str]:
        """A same-origin urlencoded form; a session's must carry its CSRF token."""
        self.same_origin(request)
        if (
            request.headers.get("content-type", "").split(";")[0].strip()
            != "application/x-www-form-urlencoded"
        ):
            raise Refused(415, "expected a form (application/x-www-form-urlencoded)")
        try:
            fields = dict(
                parse_qsl(
                    (await self.body(request)).decode("utf-8"),
                    keep_blank_values=True,
                    max_num_fields=50,
                    strict_parsing=False,
                )
            )
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "unreadable form") from None
        if caller is not None and caller.session is not None:
            if not self.keys.csrf_ok(caller.session, fields.get("csrf", "")):
                raise Refused(
                    403, "the form's CSRF token is missing or wrong: reload the page and try again"
                )
        return fields

    def next_path(self, value: str | None) -> str:
        """Where to go after logging in: a console path, never another site."""
        if (
            value
            and (value == self.base or value.startswith(self.base + "/"))
            and "//" not in value
            and "\\" not in value
            and value.isprintable()
        ):
            return value
        return self.base

    # ------------------------------------------------------------------ endpoints, wrapped

    def page(
        self, fn: Callable[[Request, Caller], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """An HTML endpoint: log-in page for a caller without credentials, errors as one line."""

        async def endpoint(request: Request) -> Response:
            caller: Caller | None = None
            try:
                caller = await self.authenticate(request)
                if caller is None:
                    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return self.login_page(
                        self.next_path(here) if request.method == "GET" else self.base, 401
                    )
                return await fn(request, caller)
            except Refused as exc:
                refused = self.html("Refused", pages.error_box(exc.message), caller, exc.status)
                refused.headers.update(exc.headers)
                return refused
            except OpsError as exc:
                return self.html("Not possible", pages.error_box(str(exc)), caller, 400)
            except FreedomError as exc:
                return self.html("Cluster unavailable", pages.error_box(str(exc)), caller, 503)
            except Exception:  # noqa: BLE001 - a page, not a traceback
                log.exception("console: %s %s failed", request.method, request.url.path)
                return self.html(
                    "Error",
                    pages.error_box(
                        "the console failed to answer; the service's log has the details"
                    ),
                    caller,
                    500,
                )

        return endpoint

    def api(
        self, fn: Callable[[Request, Caller], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A JSON endpoint: 401 without credentials, errors as {"error": "..."}."""

        async def endpoint(request: Request) -> Response:
            try:
                caller = await self.authenticate(request)
                if caller is None:
                    return self.json(
                        {"error": "log in, or send Authorization: Bearer <console_token>"},
                        401,
                        {"www-authenticate": 'Bearer realm="freedom console"'},
                    )
                return await fn(request, caller)
            except Refused as exc:
                return self.json({"error": exc.message}, exc.status, exc.headers)
            except OpsError as exc:
                return self.json({"error": str(exc)}, 400)
            except FreedomError as exc:
                return self.json({"error": str(exc)}, 503)
            except Exception:  # noqa: BLE001
                log.exception("console: %s %s failed", request.method, request.url.path)
                return self.json(
                    {"error": "the console failed to answer; the service's log has the details"},
                    500,
                )

        return endpoint

    # ------------------------------------------------------------------ log in and out

    async def login_form(self, request: Request) -> Response:
        next_path = self.next_path(request.query_params.get("next"))
        try:
            if await self.authenticate(request) is not None:
                return RedirectResponse(next_path, 303)
        except Refused as exc:  # a wrong bearer token (slowed as anywhere): the form
            if exc.status == 429:
                return self.refused_login(next_path, exc)
        return self.login_page(next_path, 200)

    def refused_login(self, next_path: str, exc: Refused) -> Response:
        """The log-in page answering `exc` (a 429: too many wrong tokens wait)."""
        page = self.login_page(next_path, exc.status, exc.message)
        page.headers.update(exc.headers)
        return page

    async def login(self, request: Request) -> Response:
        try:
            fields = await self.form(request, None)
        except Refused as exc:
            return self.login_page(self.base, exc.status, exc.message)
        next_path = self.next_path(fields.get("next"))
        try:
            right = await self.token_checked(request, fields.get("token", ""), "login")
        except Refused as exc:
            return self.refused_login(next_path, exc)
        if not right:
            return self.login_page(next_path, 401, "wrong token")
        response = RedirectResponse(next_path, 303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            self.keys.new_session(),
            max_age=SESSION_SECONDS,
            path=self.base,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request, caller: Caller) -> Response:
        await self.form(request, caller)
        if caller.session is not None:
            self.keys.revoke(caller.session)
        response = RedirectResponse(f"{self.base}/login", 303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=self.base, httponly=True, samesite="strict")
        return response

    async def css(self, _request: Request) -> Response:
        return Response(
            pages.CSS,
            headers={**SECURITY_HEADERS, "cache-control": "max-age=3600"},
            media_type="text/css",
        )

    # ------------------------------------------------------------------ pages

    async def overview(self, request: Request, caller: Caller) -> Response:
        refresh = auto_refresh(request.query_params.get("refresh"))
        report = await self.work(lambda: status(self.target()))
        return self.html(
            "Groups and lag", pages.status_page(self.base, report, refresh), caller, refresh=refresh
        )

    async def dead_letters(self, request: Request, caller: Caller) -> Response:
        topic = request.query_params.get("topic") or None
        topics = await self.work(lambda: list_dead_letters(self.target(), topic))
        csrf = self.keys.csrf(caller.session) if caller.session else None
        body = pages.dead_letters_page(self.base, topics, csrf)
        body += purge_section(self.base, csrf, [t.topic for t in topics])
        return self.html("Dead letters", body, caller)

    def _records(self, request: Request) -> tuple[str, str | None, str | None, int]:
        topic = request.query_params.get("topic")
        if not topic:
            raise OpsError("choose a dead-letter topic (?topic=...)")
        limit = request.query_params.get("limit", str(DEFAULT_RECORDS))
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit[:6]) <= MAX_RECORDS):
            raise OpsError(f"limit: expected 1 to {MAX_RECORDS}, got {limit!r}")
        return topic, request.query_params.get("class"), request.query_params.get("key"), int(limit)

    def find_records(
        self, topic: str, error_class: str | None, key: str | None, limit: int
    ) -> tuple[list[DeadLetter], bool]:
        """The first `limit` dead letters of `topic` of `error_class` (with `key`); more than that?"""
        out: list[DeadLetter] = []
        for fail in fail_topics(self.target(), topic):
            found = scan(fail, Filter(key=key))
            try:
                for d, _ in found:
                    if error_class is not None and d.error_class != error_class:
                        continue
                    if len(out) >= limit:
                        return out, True
                    out.append(d)
            finally:
                getattr(found, "close", lambda: None)()  # the generator closes its reader
        return out, False

    async def records(self, request: Request, caller: Caller) -> Response:
        topic, error_class, key, limit = self._records(request)
        found, more = await self.work(lambda: self.find_records(topic, error_class, key, limit))
        grep = ""
        if (
            found and error_class is not None
        ):  # a filter the replay form starts with: the status, or the text
            grep = str(found[0].status) if found[0].status is not None else found[0].error
        csrf = self.keys.csrf(caller.session) if caller.session else None
        purging = purge_details(self.base, csrf, topic, grep)
        body = pages.records_page(
            self.base, topic, error_class, found, limit, more, csrf, grep, purging
        )
        return self.html("Dead letters", body, caller)

    def operator(self, caller: Caller) -> str:
        """Who a console replay's audit line names: the token's label (not the service's OS user),
        how it came and from where."""
        return f'console token "{self.label}" ({caller.how} from {printable(caller.address)})'

    async def dry_run(self, args: ReplayArgs, caller: Caller) -> ReplayReport:
        """What a replay with these arguments would do (the preview, and the API's dry run)."""
        return await self.work(
            lambda: replay(
                self.target(),
                args.topic,
                args.flt,
                dry_run=True,
                rate=args.rate,
                max_replays=args.max_replays,
                operator=self.operator(caller),
            )
        )

    async def preview(self, request: Request, caller: Caller) -> Response:
        args = replay_args(await self.form(request, caller))
        report = await self.dry_run(args, caller)
        signature = self.keys.replay_signature(args.params)
        csrf = self.keys.csrf(caller.session) if caller.session else None
        return self.html(
            "Replay preview",
            pages.preview_page(self.base, report, args.params, signature, csrf),
            caller,
        )

    def run_replay(self, args: ReplayArgs, caller: Caller) -> ReplayReport:
        """One replay at a time (a second would be fenced by the first: the same job)."""
        if not self.one_job.acquire(blocking=False):
            raise OpsError("a replay or purge started from the console is running; wait for it")
        try:
            audit_log.info(
                "web console: dlq replay requested from %s (%s): topic %s, filter %s",
                caller.address,
                caller.how,
                args.topic or "(every dead-letter topic)",
                json.dumps(args.flt.describe(), sort_keys=True, ensure_ascii=False),
            )
            return replay(
                self.target(),
                args.topic,
                args.flt,
                rate=args.rate,
                max_replays=args.max_replays,
                operator=self.operator(caller),
            )
        finally:
            self.one_job.release()

    async def run(self, request: Request, caller: Caller) -> Response:
        fields = await self.form(request, caller)
        args = replay_args(fields)
        if not self.keys.replay_ok(args.params, fields.get("preview", "")):
            raise Refused(
                400, "run a replay from its preview (the dry run): this one was not previewed"
            )
        report = await self.work(lambda: self.run_replay(args, caller))
        return self.html("Replay done", pages.result_page(report), caller)

    # ------------------------------------------------------------------ JSON

    async def api_status(self, _request: Request, _caller: Caller) -> Response:
        return self.json(plain(await self.work(lambda: status(self.target()))))

    async def api_dead_letters(self, request: Request, _caller: Caller) -> Response:
        topic = request.query_params.get("topic") or None
        return self.json(
            [plain(t) for t in await self.work(lambda: list_dead_letters(self.target(), topic))]
        )

    async def api_records(self, request: Request, _caller: Caller) -> Response:
        topic, error_class, key, limit = self._records(request)
        found, more = await self.work(lambda: self.find_records(topic, error_class, key, limit))
        return self.json({"records": [plain(d) for d in found], "more": more})

    async def api_replay(self, request: Request, caller: Caller) -> Response:
        """POST {"topic": ..., filters ..., "dry_run": true}; a run needs "dry_run": false and the bearer token."""
        if caller.how != "bearer":
            raise Refused(
                403,
                "POST /api/replay takes Authorization: Bearer <console_token> (use the pages' forms "
                "when logged in)",
            )
        try:
            given = json.loads(await self.body(request))
        except ValueError:
            raise Refused(400, "expected a JSON object") from None
        fields, dry_run = json_fields(given, REPLAY_PARAMS)
        args = replay_args(fields)
        if dry_run:
            report = await self.dry_run(args, caller)
        else:
            report = await self.work(lambda: self.run_replay(args, caller))
        return self.json({**plain(report), "audit": audit_line(report)})


def install(app: Application) -> None:
    """Add the console's routes to `app` when app.toml sets `console_token` (else: nothing, 404)."""
    token = app.config.console_token
    if not token:
        return
    base = app.config.console_path
    c = Console(app, token, base)
    p = Purging(c)
    api = app.fastapi
    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("", c.page(c.overview), "GET"),
        ("/login", c.login_form, "GET"),
        ("/login", c.login, "POST"),
        ("/logout", c.page(c.logout), "POST"),
        ("/console.css", c.css, "GET"),
        ("/dead-letters", c.page(c.dead_letters), "GET"),
        ("/dead-letters/records", c.page(c.records), "GET"),
        ("/replay/preview", c.page(c.preview), "POST"),
        ("/replay/run", c.page(c.run), "POST"),
        ("/purge/preview", c.page(p.preview), "POST"),
        ("/purge/run", c.page(p.run), "POST"),
        ("/api/status", c.api(c.api_status), "GET"),
        ("/api/dead-letters", c.api(c.api_dead_letters), "GET"),
        ("/api/dead-letters/records", c.api(c.api_records), "GET"),
        ("/api/replay", c.api(c.api_replay), "POST"),
        ("/api/purge", c.api(p.api), "POST"),
    ]
    for path, endpoint, method in routes:
        api.add_route(base + path, endpoint, methods=[method], include_in_schema=False)
    log.info("web console at %s (console_token set)", base)
