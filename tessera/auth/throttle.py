"""Login throttling: repeated failures lock an account, or an IP, for a while.

Counts live in the store, so every process of a deployment sees the same lockout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.auth.models import login_failures
from tessera.errors import TooManyRequests


@dataclass(frozen=True)
class ThrottleRules:
    max_per_account: int = 5
    max_per_ip: int = 20
    window: timedelta = timedelta(minutes=15)
    lockout: timedelta = timedelta(minutes=15)


def keys(email: str, ip: str | None) -> dict[str, int]:
    return {f"account:{email.strip().lower()[:255]}": 0, **({f"ip:{ip}": 1} if ip else {})}


def check(conn: Connection, *, email: str, ip: str | None) -> None:
    """Raise TooManyRequests while the account or the IP is locked out."""
    now = datetime.now(UTC)
    rows = conn.execute(
        sa.select(login_failures.c.key, login_failures.c.locked_until).where(
            login_failures.c.key.in_(list(keys(email, ip)))
        )
    )
    for key, locked_until in rows:
        if locked_until is not None and locked_until > now:
            wait = int((locked_until - now).total_seconds()) + 1
            what = "this account" if key.startswith("account:") else "this address"
            raise TooManyRequests(
                f"too many failed sign-ins for {what}; try again in {wait} seconds",
                retry_after=wait,
            )


def record_failure(conn: Connection, *, email: str, ip: str | None, rules: ThrottleRules) -> None:
    now = datetime.now(UTC)
    for key, kind in keys(email, ip).items():
        limit = rules.max_per_account if kind == 0 else rules.max_per_ip
        row = conn.execute(sa.select(login_failures).where(login_failures.c.key == key)).first()
        if row is None or row.window_started_at + rules.window < now:
            failures, started = 1, now
        else:
            failures, started = row.failures + 1, row.window_started_at
        locked = now + rules.lockout if failures >= limit else None
        values = {"failures": failures, "window_started_at": started, "locked_until": locked}
        if row is None:
            conn.execute(login_failures.insert().values(key=key, **values))
        else:
            conn.execute(
                login_failures.update().where(login_failures.c.key == key).values(**values)
            )


def clear(conn: Connection, *, email: str) -> None:
    conn.execute(
        login_failures.delete().where(login_failures.c.key == f"account:{email.strip().lower()}")
    )
