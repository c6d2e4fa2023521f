"""Every /api/v1 route declares its permission, and the live server enforces the role table.

All of it is generated from the app's routes, so a new route is covered the day it is added:

- each /api/v1 route declares exactly one permission (`Depends(require(...))` or
  `Depends(public)`), found anywhere among its dependencies;
- the role x route matrix: on a live server, a token of each role in `ROLES` gets 403 exactly
  where `allowed(role, permission)` says no, and is never refused (401/403) where it says yes;
- every non-public route refuses a request without usable credentials with 401 and a bare
  error body, and an API token cannot send events to the tracking API.

FastAPI runs a route's dependencies (the permission check among them) before it validates the
path, query and body, so a refused role gets 403 whatever it sends; only a body that is not
JSON at all is answered 422 first. Allowed roles are sent valid example bodies (`BODIES`) so
that what they get back says their request went through authorisation.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from tessera.api.deps import Principal, public, require
from tessera.api.routes import iter_api_routes
from tessera.app import create_app
from tessera.auth.permissions import PERMISSIONS, ROLES, allowed
from tessera.auth.tokens import create_token, revoke_token
from tessera.auth.users import create_user
from tessera.config import Settings
from tessera.eventlog import list_events
from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post

API = "/api/v1"
PUBLIC = "public"
PASSWORD = "a long enough password"
LOGIN_EMAIL = "matrix@example.com"

# A plausible value for each path parameter: one that names something that exists where that
# is cheap (the seeded profile), or an id that does not (so nothing is revoked or changed).
PATH_VALUES: dict[str, str] = {
    "ref": "user_id:u1",
    "token_id": "999999",
    "user_id": "999999",
    "name": "no_such_trait",
    "audience_id": "aud_nope",
    "export_id": "exp_nope",
    "destination_id": "dst_nope",
    "message_id": "999999",
    "source_id": "999999",
}
# A valid example body for each route that takes one, so that an allowed role's request is
# not refused for its shape.
BODIES: dict[tuple[str, str], Any] = {
    ("POST", f"{API}/auth/login"): {"email": LOGIN_EMAIL, "password": PASSWORD},
    ("POST", f"{API}/auth/reset-password"): {"token": "no-such-reset-token", "password": PASSWORD},
    ("POST", f"{API}/tokens"): {"name": "matrix", "role": "analyst"},
    ("POST", f"{API}/users"): {"email": "new@example.com", "password": PASSWORD, "role": "sales"},
    ("PATCH", f"{API}/users/{{user_id}}"): {"role": "support"},
    ("POST", f"{API}/profiles/{{ref}}/unmerge"): {"merge_id": 999999},
    ("POST", f"{API}/computed-traits"): {
        "name": "matrix_orders",
        "kind": "count",
        "event": {"name": "Order Completed"},
    },
    ("PUT", f"{API}/computed-traits/{{name}}"): {"kind": "count"},
    ("POST", f"{API}/audiences"): {"name": "matrix", "definition": {"consent": "email"}},
    ("POST", f"{API}/audiences/preview"): {"definition": {"consent": "email"}},
    ("PATCH", f"{API}/audiences/{{audience_id}}"): {"name": "matrix renamed"},
    ("POST", f"{API}/audiences/{{audience_id}}/exports"): {"format": "csv"},
    ("POST", f"{API}/destinations"): {
        "name": "matrix",
        "type": "webhook",
        "config": {"url": "http://127.0.0.1:9/"},
    },
    ("PATCH", f"{API}/destinations/{{destination_id}}"): {"enabled": False},
    ("POST", f"{API}/destinations/{{destination_id}}/dead-letters/replay"): {},
    ("POST", f"{API}/sources"): {"name": "matrix"},
    ("PATCH", f"{API}/sources/{{source_id}}"): {"enabled": False},
}
SEED = [
    {
        "type": "identify",
        "userId": "u1",
        "traits": {"email": "jo@example.com", "phone": "+44 20 7946 0958", "name": "Jo"},
        "timestamp": "2026-11-01T10:00:00Z",
    },
    {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": 5}},
]
ERROR_KEYS = {"success", "code", "message"}
PII_REFS = ("email:jo@example.com", "phone:+442079460958")


# ---------------------------------------------------------------------------------------------
# a. every route declares exactly one permission


def declared_permissions(dependant: Dependant) -> set[str]:
    """The permissions declared anywhere among `dependant`'s (sub-)dependencies."""
    found: set[str] = set()
    for sub in dependant.dependencies:
        permission = getattr(sub.call, "permission", None)
        if isinstance(permission, str):
            found.add(permission)
        found |= declared_permissions(sub)
    return found


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[tuple[str, str, APIRoute]]:
    """(method, full path, route) for every method of every route under /api/v1."""
    for path, route in iter_api_routes(routes):
        if path == API or path.startswith(API + "/"):
            for method in sorted(route.methods):
                yield method, path, route


def permission_problems(routes: Iterable[BaseRoute]) -> list[str]:
    """One line for each /api/v1 route that does not declare exactly one known permission."""
    problems = []
    for method, path, route in api_routes(routes):
        permissions = declared_permissions(route.dependant)
        if not permissions:
            problems.append(
                f"{method} {path} declares no permission: add Depends(require(...)) "
                "or Depends(public) where it is defined"
            )
        elif len(permissions) > 1:
            problems.append(f"{method} {path} declares several permissions: {sorted(permissions)}")
        elif (only := next(iter(permissions))) != PUBLIC and only not in PERMISSIONS:
            problems.append(f"{method} {path} declares unknown permission {only!r}")
    return problems


def permission_of(route: APIRoute) -> str:
    (permission,) = declared_permissions(route.dependant)
    return permission


def make_app(tmp_path: Path) -> FastAPI:
    return create_app(Settings(database_url=f"sqlite:///{tmp_path / 'routes.db'}"))


def test_every_api_route_declares_exactly_one_permission(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    routes = list(api_routes(app.routes))
    assert len(routes) >= 10, "the walk found too few /api/v1 routes; did iter_api_routes break?"
    assert {(m, p) for m, p, _ in routes} >= {("GET", f"{API}/auth/me"), ("GET", f"{API}/audit")}
    problems = permission_problems(app.routes)
    assert not problems, "\n".join(problems)


# For the tiny app below (at module level: `from __future__ import annotations` makes FastAPI
# resolve annotations in the module's namespace).
Reader = Annotated[Principal, Depends(require("profiles:read"))]


def admin_only(principal: Annotated[Principal, Depends(require("users:manage"))]) -> str:
    return principal.name


def test_the_permission_check_names_undeclared_routes() -> None:
    """The checker itself, on a tiny app: it must fail for a route that declares nothing."""
    inner = APIRouter(prefix="/things")

    @inner.get("/declared")
    def declared(_: Reader) -> None: ...

    @inner.get("/nested")
    def nested(name: Annotated[str, Depends(admin_only)]) -> None: ...

    @inner.post("/public", dependencies=[Depends(public)])
    def open_to_all() -> None: ...

    @inner.get("/undeclared")
    def undeclared() -> None: ...

    @inner.delete("/twice", dependencies=[Depends(public)])
    def twice(_: Reader) -> None: ...

    outer = APIRouter(prefix=API)
    outer.include_router(inner)
    guarded = APIRouter(prefix=API, dependencies=[Depends(require("audit:read"))])

    @guarded.get("/router-level")
    def router_level() -> None: ...

    app = FastAPI()
    app.include_router(outer)
    app.include_router(guarded)

    @app.get("/healthz")
    def outside_the_api() -> None: ...

    @app.put(f"{API}/direct")
    def direct_undeclared() -> None: ...

    assert permission_problems(app.routes) == [
        f"GET {API}/things/undeclared declares no permission: add Depends(require(...)) "
        "or Depends(public) where it is defined",
        f"DELETE {API}/things/twice declares several permissions: ['profiles:read', 'public']",
        f"PUT {API}/direct declares no permission: add Depends(require(...)) "
        "or Depends(public) where it is defined",
    ]
    found = {
        (m, p): sorted(declared_permissions(r.dependant)) for m, p, r in api_routes(app.routes)
    }
    assert found[("GET", f"{API}/things/nested")] == ["users:manage"]
    assert found[("GET", f"{API}/router-level")] == ["audit:read"]
    assert ("GET", "/healthz") not in found


def test_the_matrix_has_values_for_every_parameter_and_body(tmp_path: Path) -> None:
    """The live matrix falls back to '1' and `{}` so it still runs on a new route, but then an
    allowed role may only get a 422; give it real values here."""
    missing = []
    for method, path, route in api_routes(make_app(tmp_path).routes):
        missing += [
            f"PATH_VALUES[{param.name!r}] (for {method} {path})"
            for param in route.dependant.path_params
            if param.name not in PATH_VALUES
        ]
        if route.body_field is not None and (method, path) not in BODIES:
            missing.append(f"BODIES[({method!r}, {path!r})]")
    assert not missing, "add to tests/auth/test_permission_matrix.py: " + ", ".join(missing)


# ---------------------------------------------------------------------------------------------
# b. the role x route matrix on a live server


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # the route's path, with {placeholders}
    permission: str

    @property
    def url_path(self) -> str:
        return re.sub(r"{(\w+)(?::\w+)?}", lambda m: PATH_VALUES.get(m.group(1), "1"), self.path)

    @property
    def body(self) -> Any:
        return BODIES.get((self.method, self.path), {})

    def send(self, client: httpx.Client, path: str | None = None, **kwargs: Any) -> httpx.Response:
        if self.method not in ("GET", "HEAD", "DELETE"):
            kwargs["json"] = self.body
        response = client.request(self.method, path or self.url_path, **kwargs)
        client.cookies.clear()  # a sign-in's session cookie must not carry over
        return response

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.permission})"


def api_calls(live: LiveTessera) -> list[Call]:
    app = create_app(live.settings, engine=live.engine)
    calls = [Call(m, p, permission_of(r)) for m, p, r in api_routes(app.routes)]
    assert calls, "no /api/v1 routes found"
    return calls


def seed(live: LiveTessera) -> dict[str, str]:
    """A profile to look up, a user to sign in as, and a token of each role."""
    response = post(live, "/v1/batch", {"batch": SEED})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)
    with live.engine.begin() as conn:
        create_user(conn, email=LOGIN_EMAIL, password=PASSWORD, role="support")
        return {role: create_token(conn, name=f"matrix-{role}", role=role)[0] for role in ROLES}


def short(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text[:200]}"


def json_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def test_role_by_route_matrix(live: LiveTessera) -> None:
    tokens = seed(live)
    failures = []
    checked = 0
    calls = api_calls(live)
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for call, role in ((call, role) for call in calls for role in ROLES):
            response = call.send(client, headers={"Authorization": f"Bearer {tokens[role]}"})
            checked += 1
            if call.permission == PUBLIC or allowed(role, call.permission):
                if response.status_code in (401, 403) or response.status_code >= 500:
                    failures.append(
                        f"{call} as {role}: expected to be let through, got {short(response)}"
                    )
            elif response.status_code != 403 or json_of(response).get("code") != "forbidden":
                failures.append(f"{call} as {role}: expected 403 forbidden, got {short(response)}")
            elif set(json_of(response)) != ERROR_KEYS:
                failures.append(
                    f"{call} as {role}: the 403 carries more than an error: {response.text[:200]}"
                )
    assert checked == len(ROLES) * len(calls)
    assert not failures, f"{len(failures)} of {checked} checks failed:\n" + "\n".join(failures)


def test_analysts_cannot_look_profiles_up_by_personal_data(live: LiveTessera) -> None:
    """Every route that takes a profile reference refuses an analyst an email or a phone."""
    tokens = seed(live)
    calls = [call for call in api_calls(live) if "{ref}" in call.path]
    assert calls
    failures = []
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for call in calls:
            for ref, role in itertools.product(PII_REFS, ("analyst", "admin")):
                response = call.send(
                    client,
                    call.url_path.replace(PATH_VALUES["ref"], ref),
                    headers={"Authorization": f"Bearer {tokens[role]}"},
                )
                refused = response.status_code == 403
                if role == "analyst" and not refused:
                    failures.append(f"{call} with {ref} as analyst: {short(response)}")
                if role != "analyst" and refused:
                    failures.append(f"{call} with {ref} as {role} was refused: {short(response)}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# c. no usable credentials, no data


def test_every_route_refuses_missing_and_unusable_credentials(live: LiveTessera) -> None:
    with live.engine.begin() as conn:
        revoked, principal = create_token(conn, name="gone", role="admin")
        revoke_token(conn, token_id=principal.token_id)
        create_token(conn, name="someone", role="admin")  # so the store is not empty of tokens
    credentials: dict[str, dict[str, Any]] = {
        "no credentials": {},
        "an unknown token": {"headers": {"Authorization": "Bearer tsk_nope"}},
        "a revoked token": {"headers": {"Authorization": f"Bearer {revoked}"}},
        "a write key as bearer": {"headers": {"Authorization": f"Bearer {live.write_key}"}},
        "a write key as basic auth": {"auth": (live.write_key, "")},
        "a bearer without a token": {"headers": {"Authorization": "Bearer"}},
        "an unknown session cookie": {"headers": {"Cookie": "tessera_session=not-a-session"}},
    }
    secrets = (revoked, live.write_key, "tsk_nope", "not-a-session")
    calls = [call for call in api_calls(live) if call.permission != PUBLIC]
    failures = []
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for call, (name, kwargs) in itertools.product(calls, credentials.items()):
            response = call.send(client, **kwargs)
            label = f"{call} with {name}"
            if response.status_code != 401:
                failures.append(f"{label}: expected 401, got {short(response)}")
                continue
            body = json_of(response)
            if set(body) != ERROR_KEYS or body["success"] is not False:
                failures.append(f"{label}: the 401 body is not a bare error: {response.text}")
            if body.get("code") != "unauthorized":
                failures.append(f"{label}: code {body.get('code')!r}, not 'unauthorized'")
            if any(secret in response.text for secret in secrets):
                failures.append(f"{label}: the response echoes a credential: {response.text}")
    assert not failures, f"{len(failures)} refusals went wrong:\n" + "\n".join(failures)


def test_an_api_token_cannot_send_events(live: LiveTessera) -> None:
    with live.engine.begin() as conn:
        token, _ = create_token(conn, name="not-a-write-key", role="admin")
    message = {"userId": "u1", "event": "Signed Up"}
    for kwargs in (
        {"headers": {"Authorization": f"Bearer {token}"}},
        {"auth": (token, "")},
    ):
        response = httpx.post(f"{live.url}/v1/track", json=message, timeout=30, **kwargs)
        assert response.status_code == 401, (kwargs, response.text)
        assert response.json()["success"] is False
        assert token not in response.text
    wait_until_caught_up(live.engine)
    with live.engine.connect() as conn:
        assert list_events(conn, limit=10) == []
