"""The identity graph of one profile, laid out for an SVG drawn on the server: each profile
it was built from is a hub with the identifiers it brought, and each merge is an edge from
the surviving hub to the absorbed one. `templates/profile/graph.html` draws the layout.

A tree read top to bottom, not a force-directed picture: merges do form a tree (a profile
is absorbed once), it stays legible at a phone's width, and the same order reads aloud as
the text alternative below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

WIDTH = 360
PAD = 12
HUB_ROW = 30  # a hub's line
LEAF_ROW = 22  # an identifier's line
LABEL_ROW = 20  # the line that says how a merge joined a hub
INDENT = 24  # each level of merges moves right by this
LEAF_OFFSET = 20  # an identifier's dot, right of its hub's spine
# Text widths, to shorten values so they fit (SVG text does not wrap): identifier types are
# 11 px sans-serif (about 6.2 px a character, at most), values 11 px monospace (0.6 em).
TYPE_CHAR = 6.2
VALUE_CHAR = 6.6
GAP = 6  # between an identifier's type and its value
RULES = {"identifier": "shared identifier", "alias": "alias call"}


@dataclass(frozen=True, slots=True)
class Hub:
    id: str
    x: float
    y: float
    note: str
    root: bool


@dataclass(frozen=True, slots=True)
class Leaf:
    x: float
    y: float
    kind: str
    value: str  # as shown (shortened to fit)
    full: str  # "type: value", for the tooltip
    linked: bool  # one of the identifiers a merge came through


@dataclass(frozen=True, slots=True)
class Line:
    d: str  # an SVG path
    kind: str  # "own" (a hub to its identifiers) or "merge"


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(slots=True)
class Drawing:
    width: int
    height: int = 0
    hubs: list[Hub] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)  # the text alternative, sentence by sentence


def day(moment: datetime | None) -> str:
    """`3 Oct 2026` (UTC): SVG text cannot hold a <time> the page's script localises."""
    if moment is None:
        return ""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).strftime("%-d %b %Y")


def shorten(kind: str, value: str, room: float) -> str:
    """`value`, cut with an ellipsis so that `kind value` fits in `room` pixels."""
    fits = max(6, int((room - len(kind) * TYPE_CHAR - GAP) / VALUE_CHAR))
    return value if len(value) <= fits else value[: fits - 1] + "…"


def layout(graph: dict[str, Any], root: str) -> Drawing:
    """Place `graph` (`service.identity_graph_for`) with `root` (the profile) at the top."""
    members = {member["id"]: member for member in graph["members"]}
    members.setdefault(root, {"id": root, "created_at": None})
    brought: dict[str, list[dict[str, Any]]] = {}
    for item in graph["identifiers"]:
        owner = item["origin"] if item["origin"] in members else root
        brought.setdefault(owner, []).append(item)
    children: dict[str, list[dict[str, Any]]] = {}
    for merge in graph["merges"]:
        children.setdefault(merge["survivor_id"], []).append(merge)
    linking = {identifier for merge in graph["merges"] for identifier in merge["identifiers"]}
    drawing = Drawing(width=WIDTH)
    placed: set[str] = set()
    y = float(PAD)

    def place(member_id: str, depth: int, merge: dict[str, Any] | None) -> float:
        """Draw the hub, its identifiers and its merged children; return the hub's y."""
        nonlocal y
        placed.add(member_id)
        x = PAD + 6 + depth * INDENT
        if merge is not None:
            rule = RULES.get(merge["rule"], merge["rule"])
            drawing.labels.append(
                Label(x - 2, y + 13, f"merged {day(merge['merged_at'])} · {rule}")
            )
            y += LABEL_ROW
        hub_y = y + HUB_ROW / 2
        member = members.get(member_id, {"created_at": None})
        note = f"since {day(member['created_at'])}" if member["created_at"] else ""
        drawing.hubs.append(Hub(member_id, x, hub_y, note, root=member_id == root))
        y += HUB_ROW
        own = brought.get(member_id, [])
        for item in own:
            leaf_y = y + LEAF_ROW / 2
            room = WIDTH - PAD / 2 - (x + LEAF_OFFSET + 9)
            kind, value = item["type"], item["value"]
            drawing.leaves.append(
                Leaf(
                    x + LEAF_OFFSET,
                    leaf_y,
                    kind,
                    shorten(kind, value, room),
                    f"{kind}: {value}",
                    f"{kind}:{value}" in linking,
                )
            )
            drawing.lines.append(Line(f"M{x} {leaf_y}H{x + LEAF_OFFSET - 4}", "own"))
            y += LEAF_ROW
        # Merge edges leave the spine below the last identifier (or the hub itself).
        fork = y - LEAF_ROW / 2 if own else hub_y + 8
        if own:
            drawing.lines.append(Line(f"M{x} {hub_y + 8}V{fork}", "own"))
        count = len(own)
        drawing.summary.append(
            f"{member_id} brought {count} identifier{'s' if count != 1 else ''}"
            + (f": {', '.join(i['type'] + ' ' + i['value'] for i in own)}." if own else ".")
        )
        for child in children.get(member_id, []):
            if child["absorbed_id"] in placed:
                continue
            drawing.summary.append(
                f"{child['absorbed_id']} was merged into {member_id} on "
                f"{day(child['merged_at'])} by a {RULES.get(child['rule'], child['rule'])}"
                f" ({', '.join(child['identifiers'])})."
            )
            child_y = place(child["absorbed_id"], depth + 1, child)
            # Every child's edge starts at the fork, so each reaches the hub (they overlap).
            child_x = x + INDENT
            drawing.lines.append(Line(f"M{x} {fork}V{child_y}H{child_x - 9}", "merge"))
        return hub_y

    place(root, 0, None)
    # Profiles merged in whose merge row is gone (a replay deleted it): shown, unlinked.
    for member_id in members:
        if member_id not in placed:
            place(member_id, 1, None)
    drawing.height = int(y + PAD)
    return drawing
