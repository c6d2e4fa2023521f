"""Saved views: a list page's filters, sort and columns (its query string) kept by name,
for oneself or shared with everyone who may open the page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.errors import BadRequest, NotFound
from tessera.web.models import saved_views

MAX_PER_PAGE = 50
# Never part of a view: where a page of results starts is not a filter.
TRANSIENT = frozenset({"cursor", "after", "csrf_token"})


def clean_query(query: str) -> str:
    """The query string without paging, in a stable order."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=False) if k not in TRANSIENT]
    return urlencode(sorted(pairs))


def list_views(conn: Connection, *, page: str, user_id: int) -> list[dict[str, Any]]:
    """One's own views and the shared ones, by name."""
    rows = conn.execute(
        sa.select(saved_views)
        .where(
            saved_views.c.page == page,
            sa.or_(saved_views.c.user_id == user_id, saved_views.c.shared),
        )
        .order_by(saved_views.c.name, saved_views.c.id)
        .limit(MAX_PER_PAGE * 2)
    )
    return [{**row._mapping, "mine": row.user_id == user_id} for row in rows]


def save_view(
    conn: Connection, *, page: str, user_id: int, name: str, query: str, shared: bool
) -> dict[str, Any]:
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise BadRequest("give the view a name of 1 to 100 characters")
    if not page.startswith("/") or len(page) > 100:
        raise BadRequest(f"views are saved for a page of this site, not {page[:100]!r}")
    query = clean_query(query)
    if len(query) > 2000:
        raise BadRequest("this view has too many filters to save; remove some")
    mine = conn.execute(
        sa.select(saved_views.c.id).where(
            saved_views.c.page == page, saved_views.c.user_id == user_id
        )
    ).all()
    same = conn.execute(
        sa.select(saved_views.c.id).where(
            saved_views.c.page == page,
            saved_views.c.user_id == user_id,
            saved_views.c.name == name,
        )
    ).first()
    values = {"query": query, "shared": shared, "created_at": datetime.now(UTC)}
    if same is not None:  # saving under an existing name replaces it
        conn.execute(saved_views.update().where(saved_views.c.id == same.id).values(**values))
        view_id = same.id
    else:
        if len(mine) >= MAX_PER_PAGE:
            raise BadRequest(f"you have {MAX_PER_PAGE} views on this page; delete one first")
        inserted = conn.execute(
            saved_views.insert().values(page=page, user_id=user_id, name=name, **values)
        ).inserted_primary_key
        assert inserted is not None
        view_id = inserted[0]
    return {"id": view_id, "page": page, "name": name, **values}


def delete_view(conn: Connection, *, view_id: int, user_id: int) -> str:
    """Delete one's own view; returns the page it belonged to."""
    row = conn.execute(
        sa.select(saved_views.c.page).where(
            saved_views.c.id == view_id, saved_views.c.user_id == user_id
        )
    ).first()
    if row is None:
        raise NotFound(f"you have no saved view with id {view_id}")
    conn.execute(saved_views.delete().where(saved_views.c.id == view_id))
    return str(row.page)
