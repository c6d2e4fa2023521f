"""The frame of the web UI: every page declares who may see it, forms need their CSRF token,
errors are pages for a browser and JSON for a program, and the front-end assets are served
from this server (nothing from a CDN)."""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path

import httpx
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st

from tessera.api.routes import iter_api_routes
from tessera.app import create_app
from tessera.config import Settings
from tessera.web import vendor
from tessera.web.views.signin import safe_next
from tests.auth.test_permission_matrix import declared_permissions
from tests.conftest import LiveTessera
from tests.web.helpers import HTML, browser, csrf_of, signed_in


def _pages(tmp_path: Path) -> list[tuple[str, APIRoute]]:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 't.db'}"))
    return [
        (path, route)
        for path, route in iter_api_routes(app.routes)
        if route.endpoint.__module__.startswith("tessera.web.")
    ]


def test_every_page_declares_who_may_see_it(tmp_path: Path) -> None:
    pages = _pages(tmp_path)
    assert {"/", "/login", "/settings/users", "/docs"} <= {path for path, _ in pages}
    undeclared = [
        f"{sorted(route.methods)} {path}"
        for path, route in pages
        if len(declared_permissions(route.dependant)) != 1
    ]
    assert undeclared == [], "add Depends(page(...)) or Depends(public) to: " + ", ".join(
        undeclared
    )


def test_every_form_post_checks_csrf(tmp_path: Path) -> None:
    def checks_csrf(route: APIRoute) -> bool:
        return any(sub.call.__name__ == "check_csrf" for sub in route.dependant.dependencies)

    unchecked = [
        path
        for path, route in _pages(tmp_path)
        if "POST" in route.methods and path != "/logout" and not checks_csrf(route)
    ]
    assert unchecked == []


@given(st.text(max_size=60))
def test_after_sign_in_a_person_stays_on_this_site(target: str) -> None:
    path = safe_next(target)
    assert path.startswith("/") and not path.startswith("//") and "\\" not in path


def test_safe_next_keeps_local_paths() -> None:
    assert safe_next("/settings/audit?actor=x") == "/settings/audit?actor=x"
    assert safe_next("%2Fpeople") == "/people"
    assert safe_next("//evil.example/") == "/"
    assert safe_next("https://evil.example/") == "/"


def test_errors_are_pages_for_a_browser_and_json_for_a_program(live: LiveTessera) -> None:
    with browser(live.url) as client:
        page = client.get("/no/such/page")
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "We could not find that page" in page.text and "Traceback" not in page.text
        data = client.get("/no/such/page", headers={"accept": "application/json"})
        assert data.status_code == 404 and data.json()["code"] == "not_found"
        api = client.get("/api/v1/users")  # an API path stays JSON, whatever Accept says
        assert api.status_code == 401 and api.json()["success"] is False
        # A visitor asking for a page is sent to sign in, and back afterwards.
        moved = client.get("/settings/users")
        assert moved.status_code == 303
        assert moved.headers["location"] == "/?next=%2Fsettings%2Fusers"
        hx = client.get("/settings/users", headers={"hx-request": "true"})
        assert hx.headers.get("hx-redirect", "").startswith("/?next=")


def test_forms_without_their_csrf_token_are_refused(live: LiveTessera) -> None:
    with browser(live.url) as client:
        client.get("/")
        refused = client.post("/login", data={"email": "a@example.com", "password": "x" * 20})
        assert refused.status_code == 403
        assert "reload the page" in refused.text
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        page = admin.get("/settings/tokens")
        assert page.status_code == 200
        forged = admin.post("/settings/tokens", data={"name": "x", "role": "admin"})
        assert forged.status_code == 403
        wrong = admin.post(
            "/settings/tokens", data={"name": "x", "role": "admin", "csrf_token": "guess"}
        )
        assert wrong.status_code == 403
        assert "x" not in [
            t for t in re.findall(r"<td>(\w+) <span", admin.get("/settings/tokens").text)
        ]


def test_pages_have_a_strict_content_security_policy(live: LiveTessera) -> None:
    with browser(live.url) as client:
        page = client.get("/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("style-src")[0]
        assert "<script>" not in page.text and " style=" not in page.text


def test_the_api_reference_is_served_from_this_server(live: LiveTessera) -> None:
    assert vendor.missing() == [], "run `make assets`"
    with browser(live.url) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        scripts = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert any("swagger-ui-bundle.js" in s for s in scripts)
        assert "cdn" not in page.text.lower()
        for path in scripts:
            assert client.get(path).status_code == 200, path
        assert client.get("/openapi.json").json()["info"]["title"] == "Tessera"


def test_a_page_loads_only_assets_that_exist(live: LiveTessera) -> None:
    with browser(live.url) as client:
        page = client.get("/")
        for path in re.findall(r'(?:src|href)="(/static/[^"?]+)', page.text):
            assert client.get(path).status_code == 200, path


def test_signed_in_pages_show_only_what_the_role_may_open(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "analyst")) as analyst:
        home = analyst.get("/")
        assert home.status_code == 200
        assert "/settings/users" not in home.text and "/settings/audit" not in home.text
        assert analyst.get("/settings/users").status_code == 403
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        home = admin.get("/")
        assert "/settings/users" in home.text and "/settings/audit" in home.text


def test_sign_out_ends_the_session(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "marketer")) as client:
        token = csrf_of(client.get("/").text)
        out = client.post("/logout", data={"csrf_token": token})
        assert out.status_code == 303
        assert client.get("/settings/identity").status_code == 303


def test_html_errors_never_leak_a_stack_trace(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as client:
        response = client.post("/settings/users/99999999999", data={"role": "admin"}, headers=HTML)
        assert response.status_code in (403, 404, 422)
        assert "Traceback" not in response.text
        assert httpx.codes.is_client_error(response.status_code)


def test_responses_say_how_long_the_server_took(live: LiveTessera) -> None:
    with browser(live.url) as client:
        timing = client.get("/").headers["server-timing"]
        assert re.fullmatch(r"app;dur=\d+\.\d", timing)


def test_every_sidebar_entry_names_a_known_permission() -> None:
    from tessera.auth.permissions import PERMISSIONS
    from tessera.web.views import collect

    _routers, nav = collect()
    assert {item.href for item in nav} >= {"/", "/people", "/settings/users"}
    assert [item.label for item in nav if item.permission not in PERMISSIONS] == []
