"""The People list: find a person by any piece of their name, email, phone or id, or browse
(newest known people, recently active, an audience's members), with the columns one
chooses and saved views. The same services as the API (search, the audience members)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tessera.api.deps import ConnectionDep
from tessera.audiences.service import list_audiences, list_members
from tessera.errors import BadRequest, NotFound
from tessera.profiles import directory
from tessera.profiles.masking import mask_summary
from tessera.profiles.search import search_profiles
from tessera.web import saved_views
from tessera.web.frame import Frame, NavItem
from tessera.web.session import WebUser, page

router = APIRouter(prefix="/people", include_in_schema=False)
NAV = [NavItem("People", "/people", "profiles:read", section="Customers", order=10, icon="people")]
Reader = Annotated[WebUser, Depends(page("profiles:read"))]
PAGE_SIZE = 50
COLUMNS = {
    "email": "Email",
    "phone": "Phone",
    "company": "Company",
    "updated_at": "Last active",
    "events": "Events",
    "created_at": "First seen",
}
DEFAULT_COLUMNS = ["email", "company", "updated_at", "events"]
SORTS = {"newest": "Newest people first", "recent": "Recently active (includes anonymous)"}


def _browse(
    conn: Any, *, query: str, sort: str, audience: str, after: str | None, personal: bool
) -> tuple[dict[str, Any], str | None]:
    """(a page of people, an error for the person) for the page's filters."""
    if query:
        return search_profiles(
            conn, query=query, limit=PAGE_SIZE, after=after, personal=personal
        ), None
    if audience:
        try:
            members, cursor = list_members(
                conn, audience_id=audience, cursor=after, limit=PAGE_SIZE
            )
        except NotFound:
            return {"items": [], "next_cursor": None}, "That audience no longer exists."
        found = directory.summaries(conn, [member["profile_id"] for member in members])
        items = [found[m["profile_id"]] for m in members if m["profile_id"] in found]
        return {"items": items, "next_cursor": cursor}, None
    return directory.list_people(conn, sort=sort, limit=PAGE_SIZE, after=after), None


@router.get("")
def people_page(request: Request, conn: ConnectionDep, user: Reader) -> Response:
    params = request.query_params
    query = params.get("q", "").strip()[:200]
    sort = params.get("sort", "newest") if params.get("sort") in SORTS else "newest"
    audience = params.get("audience", "").strip()[:64]
    columns = [c for c in params.getlist("cols") if c in COLUMNS] or DEFAULT_COLUMNS
    personal = user.may("pii:read")
    try:
        found, error = _browse(
            conn,
            query=query,
            sort=sort,
            audience=audience,
            after=params.get("after") or None,
            personal=personal,
        )
    except BadRequest as exc:
        found, error = {"items": [], "next_cursor": None}, exc.message.capitalize() + "."
    items = found["items"] if personal else [mask_summary(item) for item in found["items"]]
    kept = [(k, v) for k, v in params.multi_items() if k not in ("after",) and v]
    next_href = (
        "/people?" + urlencode([*kept, ("after", found["next_cursor"])])
        if found["next_cursor"]
        else None
    )
    frame: Frame = request.app.state.frame
    return frame.render(
        request,
        "people/list.html",
        {
            "people": items,
            "query": query,
            "sort": sort,
            "sorts": list(SORTS.items()),
            "audience": audience,
            "audiences": [(a["id"], a["name"]) for a in list_audiences(conn)],
            "columns": columns,
            "all_columns": COLUMNS,
            "error": error,
            "next_href": next_href,
            "filtered": bool(query or audience or sort != "newest"),
            "views": saved_views.list_views(conn, page="/people", user_id=user.principal.id),
            "view_query": saved_views.clean_query(request.url.query),
            "personal": personal,
        },
    )
