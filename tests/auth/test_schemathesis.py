"""Schemathesis against the live server's OpenAPI schema, as an admin: every operation, no 5xx,
and every documented response matches its schema.

How it is wired (schemathesis 4.32): `@schema.parametrize()` needs the schema when pytest
collects the module, but the server under test (the `live` fixture, once per backend) only
exists inside the test, on a random port. `schemathesis.pytest.from_fixture` would load it
lazily, but it runs each operation as a pytest subtest that stops, and shrinks, at the first
failure, and applies every default check. So the test drives schemathesis' Python API
itself: `schemathesis.openapi.from_url(live.url + "/openapi.json")`, then for each operation
a Hypothesis test over `operation.as_strategy(...)` (positive, negative, and positive with
path parameters that name seeded data), `case.call(...)` and
`case.validate_response(..., checks=CHECKS)`. Failures are collected, not raised, so one run
reports every distinct failure, with the exact request and the server's traceback (taken
from the log records of the server thread).

Server bugs it has found are listed in `KNOWN_BUGS`, each with an exact reproduction that
`test_known_server_bug` replays. While a bug is open (`fixed_in` is None), a fuzz failure that
matches it (by the server's exception) does not fail the run, which then ends as xfail naming
the bugs it hit, and its reproduction is xfail on the backends it affects. Once fixed, the
reproduction is a plain regression test and the fuzz run no longer excuses it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import response_schema_conformance

from tessera.api.routes import iter_api_routes
from tessera.app import create_app
from tessera.auth.tokens import create_token
from tessera.auth.users import create_user
from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 30  # per operation
# No 5xx, and documented responses match their schemas. Not schemathesis' full default set:
# status_code_conformance and positive_data_acceptance flag every 400/401/404 (FastAPI's
# schema documents only the success status and 422), and the schema says `ref` is any string;
# those are gaps in the generated documentation, not server bugs.
CHECKS = [not_a_server_error, response_schema_conformance]
PASSWORD = "a long enough password"

# Two visitors who turn out to be one person (u1): the second visit merges into the first, so
# /merges has something to show and /unmerge something to undo.
JOURNEY = [
    {"type": "page", "anonymousId": "a1", "name": "Home", "timestamp": "2026-11-01T10:00:00Z"},
    {
        "type": "identify",
        "anonymousId": "a1",
        "userId": "u1",
        "traits": {"email": "jo@example.com", "name": "Jo", "plan": "pro"},
        "context": {"ip": "10.1.2.3"},
        "timestamp": "2026-11-01T10:01:00Z",
    },
    {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"total": 40},
        "timestamp": "2026-11-01T10:02:00Z",
    },
    {"type": "page", "anonymousId": "a2", "name": "Pricing", "timestamp": "2026-11-02T09:00:00Z"},
    {
        "type": "identify",
        "anonymousId": "a2",
        "userId": "u1",
        "traits": {"phone": "+44 20 7946 0958"},
        "timestamp": "2026-11-02T09:01:00Z",
    },
    {
        "type": "group",
        "userId": "u1",
        "groupId": "acme",
        "traits": {"plan": "b2b"},
        "timestamp": "2026-11-02T09:02:00Z",
    },
]


# ---------------------------------------------------------------------------------------------
# Server bugs found by this test.


@dataclass(frozen=True)
class KnownBug:
    name: str
    reason: str
    backends: frozenset[str]
    exception: re.Pattern[str]  # matched against the server's traceback
    repro: tuple[tuple[str, str, dict[str, Any]], ...]  # (method, path, httpx kwargs)
    fixed_in: str | None = None  # the commit that fixed it

    def is_open_on(self, backend: str) -> bool:
        return self.fixed_in is None and backend in self.backends


INT32_PLUS_ONE = 2**31  # out of range for PostgreSQL's INTEGER columns
INT64_PLUS_ONE = 2**63  # out of range for SQLite's integers too
KNOWN_BUGS = (
    KnownBug(
        name="id-out-of-range",
        reason=(
            "integer ids are passed to the database unchecked: one beyond the column's range "
            "(PostgreSQL INTEGER: > 2147483647; SQLite: > 2**63-1) gives 500 instead of 404/422"
        ),
        backends=frozenset({"sqlite", "postgresql"}),
        exception=re.compile(
            r"NumericValueOutOfRange|integer out of range|too large to convert to SQLite"
        ),
        repro=tuple(
            request
            for big in (INT32_PLUS_ONE, INT64_PLUS_ONE)
            for request in (
                ("DELETE", f"/api/v1/tokens/{big}", {}),
                ("PATCH", f"/api/v1/users/{big}", {"json": {"active": True}}),
                ("POST", "/api/v1/profiles/user_id:u1/unmerge", {"json": {"merge_id": big}}),
            )
        ),
        fixed_in="985cff4",  # ids are `Path(ge=1, le=2147483647)`; merge_id likewise
    ),
    KnownBug(
        name="nul-in-text",
        reason=(
            "on PostgreSQL, a string with a NUL character (\\u0000) reaches the database, "
            "which refuses it: 500 instead of 400/422"
        ),
        backends=frozenset({"postgresql"}),
        exception=re.compile(r"NUL \(0x00\)"),
        repro=(
            ("GET", "/api/v1/audit", {"params": {"actor": "a\x00b"}}),
            ("GET", "/api/v1/audit", {"params": {"action": "a\x00b"}}),
            ("GET", "/api/v1/profiles/user_id:u1/events", {"params": {"type": "a\x00b"}}),
            ("GET", "/api/v1/profiles/user_id:u1/events", {"params": {"name": "a\x00b"}}),
            ("POST", "/api/v1/auth/login", {"json": {"email": "a\x00b", "password": "x"}}),
            ("POST", "/api/v1/tokens", {"json": {"name": "a\x00b", "role": "analyst"}}),
        ),
        fixed_in="985cff4",  # the security middleware answers 400 to any NUL
    ),
)


# ---------------------------------------------------------------------------------------------
# helpers


class ServerErrors(logging.Handler):
    """Collects the tracebacks the server thread logs (uvicorn: 'Exception in ASGI
    application'), so a 500 can be reported with its cause."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            text = "".join(logging.Formatter().formatException(record.exc_info))
            with self.guard:
                self.records.append(text)

    def take(self, wait: float) -> str:
        """The tracebacks logged since the last call; waits up to `wait` seconds for one (the
        server logs the exception after it has sent the 500)."""
        deadline = time.monotonic() + wait
        while True:
            with self.guard:
                if self.records or time.monotonic() >= deadline:
                    taken, self.records = self.records, []
                    return "\n".join(taken)
            time.sleep(0.01)


@pytest.fixture
def server_errors() -> Iterator[ServerErrors]:
    handler = ServerErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def exception_line(traceback: str) -> str:
    """The 'SomeError: message' line of a traceback (SQLAlchemy appends notes after it)."""
    for line in reversed(traceback.strip().splitlines()):
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception)\b", line):
            return line
    return "(no traceback logged)"


def backend(live: LiveTessera) -> str:
    return live.settings.database_url.partition(":")[0].partition("+")[0]


@dataclass
class Seeded:
    admin: str
    admin_id: int
    refs: list[str]
    survivor: str
    merge_id: int
    token_id: int
    user_id: int


def seed(live: LiveTessera) -> Seeded:
    """A little data, so that lookups can succeed: one merged profile, a user, two tokens."""
    response = post(live, "/v1/batch", {"batch": JOURNEY})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)
    with live.engine.begin() as conn:
        admin, principal = create_token(conn, name="fuzzer", role="admin")
        _, victim = create_token(conn, name="to-revoke", role="sales")
        user = create_user(conn, email="seeded@example.com", password=PASSWORD, role="support")
    headers = {"Authorization": f"Bearer {admin}"}
    profile = httpx.get(f"{live.url}/api/v1/profiles/user_id:u1", headers=headers, timeout=30)
    assert profile.status_code == 200, profile.text
    survivor = profile.json()["id"]
    merges = httpx.get(f"{live.url}/api/v1/profiles/{survivor}/merges", headers=headers)
    assert merges.status_code == 200 and merges.json(), merges.text
    return Seeded(
        admin=admin,
        admin_id=principal.token_id,
        refs=[survivor, *profile.json()["merged_ids"], "user_id:u1", "email:jo@example.com"],
        survivor=survivor,
        merge_id=merges.json()[0]["id"],
        token_id=victim.token_id,
        user_id=user.id,
    )


@dataclass
class Finding:
    operation: str
    problem: str
    status: int
    request: str
    response: str
    traceback: str
    curl: str
    bug: KnownBug | None = None

    @property
    def key(self) -> tuple[str, str, int, str]:
        cause = self.bug.name if self.bug else exception_line(self.traceback)
        return self.operation, self.problem, self.status, cause

    def __str__(self) -> str:
        lines = [
            f"{self.operation}: {self.problem} [{self.status}]",
            f"  request:  {self.request}",
            f"  response: {self.response}",
            f"  curl:     {self.curl}",
        ]
        if self.traceback:
            text = self.traceback.splitlines()
            ours = [line.strip() for line in text if re.match(r"\s*File .*/tessera/", line)]
            sql = [line.strip() for line in text if line.startswith("[SQL: ")]
            lines += [
                "  server traceback (Tessera's frames):",
                *(f"    {line}" for line in [*ours[-4:], exception_line(self.traceback), *sql]),
            ]
        return "\n".join(lines)


def describe_request(response: schemathesis.Response) -> str:
    sent = response.request
    body = sent.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    return f"{sent.method} {sent.url}" + (f" body={body[:300]!r}" if body else "")


@dataclass
class Fuzzer:
    live: LiveTessera
    data: Seeded
    errors: ServerErrors
    findings: dict[tuple[str, str, int, str], Finding] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    def strategy(self, operation: APIOperation) -> st.SearchStrategy[Case]:
        strategies = [
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        ]
        params = set(re.findall(r"{(\w+)}", operation.path))
        if "ref" in params:
            body = {"merge_id": self.data.merge_id} if operation.path.endswith("/unmerge") else None
            strategies.append(
                st.sampled_from(self.data.refs).flatmap(
                    lambda ref: operation.as_strategy(
                        path_parameters={"ref": ref},
                        **({"body": body} if body is not None else {}),
                    )
                )
            )
        existing = {"token_id": self.data.token_id, "user_id": self.data.user_id}
        for name in params & existing.keys():
            strategies.append(operation.as_strategy(path_parameters={name: existing[name]}))
        return st.one_of(strategies)

    def exercise(self, case: Case) -> None:
        if str(case.path_parameters.get("token_id")) == str(self.data.admin_id):
            return  # revoking the fuzzer's own token would end the run
        label = case.operation.label
        response = case.call(
            base_url=self.live.url,
            session=self.session,
            headers={"Authorization": f"Bearer {self.data.admin}"},
            timeout=30,
        )
        self.statuses.setdefault(label, Counter())[response.status_code] += 1
        traceback = self.errors.take(wait=2.0 if response.status_code >= 500 else 0)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                self.record(case, response, failure.title, traceback)

    def record(
        self, case: Case, response: schemathesis.Response, problem: str, traceback: str
    ) -> None:
        bug = next(
            (
                bug
                for bug in KNOWN_BUGS
                if bug.is_open_on(backend(self.live)) and bug.exception.search(traceback)
            ),
            None,
        )
        finding = Finding(
            operation=case.operation.label,
            problem=problem,
            status=response.status_code,
            request=describe_request(response),
            response=response.content.decode(errors="replace")[:300],
            traceback=traceback,
            curl=case.as_curl_command(headers={"Authorization": "Bearer $TOKEN"}),
            bug=bug,
        )
        self.findings.setdefault(finding.key, finding)

    def run(self, operation: APIOperation) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[
                HealthCheck.function_scoped_fixture,
                HealthCheck.too_slow,
                HealthCheck.filter_too_much,
                HealthCheck.data_too_large,
            ],
        )
        @given(case=self.strategy(operation))
        def fuzz(case: Case) -> None:
            self.exercise(case)

        fuzz()


# ---------------------------------------------------------------------------------------------
# tests


def test_schemathesis_finds_no_server_errors_or_schema_mismatches(
    live: LiveTessera, server_errors: ServerErrors
) -> None:
    started = time.monotonic()
    data = seed(live)
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"schemathesis cannot read an operation: {result}"
        operations.append(result.ok())
    app = create_app(live.settings, engine=live.engine)
    routes = {
        f"{method} {path}"
        for path, route in iter_api_routes(app.routes)
        if route.include_in_schema
        for method in route.methods
    }
    assert {operation.label for operation in operations} == routes

    fuzzer = Fuzzer(live, data, server_errors)
    for operation in operations:
        fuzzer.run(operation)

    me = httpx.get(
        f"{live.url}/api/v1/auth/me",
        headers={"Authorization": f"Bearer {data.admin}"},
        timeout=30,
    )
    assert me.status_code == 200, "the fuzzer's token stopped working; the run proves nothing"
    unexercised = sorted(routes - set(fuzzer.statuses))
    assert not unexercised, f"no request reached: {unexercised}"
    summary = "\n".join(
        f"  {label}: {dict(sorted(counts.items()))}" for label, counts in fuzzer.statuses.items()
    )
    sent = sum(counts.total() for counts in fuzzer.statuses.values())
    print(
        f"\nschemathesis on {backend(live)}: {sent} requests "
        f"in {time.monotonic() - started:.1f}s; statuses per operation:\n{summary}"
    )

    unknown = [f for f in fuzzer.findings.values() if f.bug is None]
    known = [f for f in fuzzer.findings.values() if f.bug is not None]
    for finding in known:
        print(f"\nknown bug {finding.bug.name if finding.bug else ''}:\n{finding}")
    if unknown:
        report = "\n\n".join(map(str, unknown))
        pytest.fail(f"schemathesis found {len(unknown)} problem(s):\n\n{report}", pytrace=False)
    if known:
        names = sorted({f.bug.name for f in known if f.bug})
        pytest.xfail(
            f"only known server bugs were hit ({', '.join(names)}; "
            "see KNOWN_BUGS and test_known_server_bug): "
            + "; ".join(f"{f.operation} [{f.status}]" for f in known)
        )


@pytest.mark.parametrize("bug", KNOWN_BUGS, ids=lambda bug: bug.name)
def test_known_server_bug(
    live: LiveTessera, server_errors: ServerErrors, bug: KnownBug, request: pytest.FixtureRequest
) -> None:
    """Each bug schemathesis found, reproduced exactly: no 5xx, xfail where the bug is open;
    once fixed, a regression test (the fix refuses each request with a 4xx)."""
    if bug.is_open_on(backend(live)):
        request.applymarker(pytest.mark.xfail(reason=bug.reason, strict=False))
    data = seed(live)
    failures = []
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for method, path, kwargs in bug.repro:
            response = client.request(
                method, path, headers={"Authorization": f"Bearer {data.admin}"}, **kwargs
            )
            status = response.status_code
            traceback = server_errors.take(wait=2.0 if status >= 500 else 0)
            if status >= 500 or (bug.fixed_in and not 400 <= status < 500):
                cause = exception_line(traceback) if status >= 500 else ""
                failures.append(f"{method} {path} {kwargs}: {status} {response.text} {cause}")
    assert not failures, f"{bug.reason}:\n" + "\n".join(failures)
