"""Destination secrets at rest, on both backends: a dump of the database does not reveal
them, deliveries still carry correct signatures, rotation moves them to a new key (through
the real `tessera secrets rotate`), plain text from before encryption keeps working and is
encrypted at start, and a secret no key opens shows in the destination's health without
stopping delivery to the others."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from tessera.activation.models import destinations
from tessera.config import Settings
from tessera.store.secrets import Keyring, SecretUnreadable, generate_key, parse_keys
from tests.activation.receiver import receiver
from tests.activation.test_delivery import FAST, Admin, orders, send, wait_for, webhook
from tests.conftest import LiveTessera, start_live

pytestmark = pytest.mark.slow

SIGNING_SECRET = "whsec_d0-not-leak-9f2c"
WRITE_KEY = "sgmt_wk_d0-not-leak-41aa"


@contextlib.contextmanager
def served(settings: Settings, engine: Engine, key: str) -> Iterator[LiveTessera]:
    update = {**FAST, "secret_key": SecretStr(key)}
    yield from start_live(settings.model_copy(update=update), engine)


def dump(engine: Engine) -> str:
    """Every row of every table, as text: what a database dump would hold."""
    tables = sa.MetaData()
    tables.reflect(engine)
    assert "destinations" in tables.tables and "audit_log" in tables.tables
    with engine.connect() as conn:
        return "\n".join(
            repr(row) for table in tables.sorted_tables for row in conn.execute(sa.select(table))
        )


def stored_secret(engine: Engine, destination_id: str, field: str = "secret") -> str:
    with engine.connect() as conn:
        config = conn.execute(
            sa.select(destinations.c.config).where(destinations.c.id == destination_id)
        ).scalar_one()
    value: str = orjson.loads(config)[field]
    return value


def rotate(store_url: str, keys: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TESSERA_DATABASE_URL": store_url, "TESSERA_SECRET_KEY": keys}
    return subprocess.run(
        [sys.executable, "-m", "tessera", "secrets", "rotate"],
        check=False,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def health(admin: Admin, destination_id: str) -> dict[str, Any]:
    found: dict[str, Any] = admin.ok("GET", f"/api/v1/destinations/{destination_id}")
    return found


def test_a_dump_reveals_no_secret_and_deliveries_are_signed(
    settings: Settings, engine: Engine
) -> None:
    key = generate_key()
    new_secret = SIGNING_SECRET + "-2"
    with served(settings, engine, key) as live, receiver(secret=new_secret) as hook:
        admin = Admin(live)
        hooked = admin.ok(
            "POST", "/api/v1/destinations", webhook("orders", hook.url, secret=SIGNING_SECRET), 201
        )
        segment = {
            "name": "segment",
            "type": "segment",
            "config": {"endpoint": hook.url, "write_key": WRITE_KEY},
            "subscriptions": [{"type": "events", "event_names": ["Never Sent"]}],
        }
        forwarder = admin.ok("POST", "/api/v1/destinations", segment, 201)
        assert forwarder["config"]["write_key"] == "********"
        # A new secret through an update, then an update that sends the mask back.
        path = f"/api/v1/destinations/{hooked['id']}"
        admin.ok("PATCH", path, {"config": {"url": hook.url, "secret": new_secret}})
        changed = admin.ok("PATCH", path, {"config": {"secret": "********", "batch_size": 2}})
        assert changed["config"]["secret"] == "********"
        events = orders(2, 3)
        send(live, events)
        wait_for(lambda: len(hook.messages()) >= len(events), what="the orders")
        assert hook.bad_signatures == 0
        assert {m["messageId"] for m in hook.messages()} == {e["messageId"] for e in events}

    text = dump(engine)
    for secret in (SIGNING_SECRET, new_secret, WRITE_KEY):
        assert secret not in text
    keys = Keyring(parse_keys(key))
    assert keys.decrypt(stored_secret(engine, hooked["id"])) == new_secret
    assert keys.decrypt(stored_secret(engine, forwarder["id"], "write_key")) == WRITE_KEY


def test_rotation_to_a_new_key_end_to_end(
    settings: Settings, engine: Engine, store_url: str
) -> None:
    old, new = generate_key(), generate_key()
    with receiver(secret=SIGNING_SECRET) as hook:
        with served(settings, engine, old) as live:
            admin = Admin(live)
            made = admin.ok(
                "POST",
                "/api/v1/destinations",
                webhook("orders", hook.url, secret=SIGNING_SECRET),
                201,
            )
            send(live, orders(1, 2))
            wait_for(lambda: len(hook.messages()) >= 2, what="the first orders")
        under_old = stored_secret(engine, made["id"])

        # The operator prepends the new key, rotates, then drops the old one.
        rotated = rotate(store_url, f"{new},{old}")
        assert rotated.returncode == 0, rotated.stderr
        assert "re-encrypted 1 secret(s) of 1 destination(s) under the newest key" in (
            rotated.stdout
        )
        under_new = stored_secret(engine, made["id"])
        assert under_new != under_old
        assert Keyring(parse_keys(new)).decrypt(under_new) == SIGNING_SECRET
        with pytest.raises(SecretUnreadable):
            Keyring(parse_keys(old)).decrypt(under_new)

        with served(settings, engine, new) as live:
            admin = Admin(live)
            later = [
                {**event, "messageId": f"later-{event['messageId']}"} for event in orders(2, 2)
            ]
            send(live, later)
            wait_for(lambda: len(hook.messages()) >= 6, what="the orders after rotation")
            assert health(admin, made["id"])["last_error"] is None
        assert hook.bad_signatures == 0
    with engine.connect() as conn:
        audit = conn.execute(sa.text("SELECT action, details FROM audit_log")).all()
    assert any(action == "secrets.rotate" for action, _ in audit)
    assert SIGNING_SECRET not in dump(engine)


def test_plain_text_from_before_encryption_works_and_is_encrypted_at_start(
    settings: Settings, engine: Engine, store_url: str
) -> None:
    key = os.environ["TESSERA_SECRET_KEY"]  # what the CLI's processes use
    with receiver(secret=SIGNING_SECRET) as hook, served(settings, engine, key) as live:
        admin = Admin(live)
        made = admin.ok(
            "POST",
            "/api/v1/destinations",
            {**webhook("legacy", hook.url, secret=SIGNING_SECRET), "enabled": False},
            201,
        )
        # As a store written before encryption holds it (an update through the API
        # would encrypt it).
        with engine.begin() as conn:
            config = {"url": hook.url, "secret": SIGNING_SECRET}
            conn.execute(
                destinations.update()
                .where(destinations.c.id == made["id"])
                .values(config=orjson.dumps(config).decode(), enabled=True)
            )
        assert stored_secret(engine, made["id"]) == SIGNING_SECRET
        send(live, orders(1, 2))
        wait_for(lambda: len(hook.messages()) >= 2, what="orders to the legacy config")
        assert hook.bad_signatures == 0

    started = subprocess.run(
        [sys.executable, "-m", "tessera", "migrate"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "TESSERA_DATABASE_URL": store_url},
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert "encrypted 1 destination secret(s) that were stored in plain text" in started.stderr
    assert Keyring(parse_keys(key)).decrypt(stored_secret(engine, made["id"])) == SIGNING_SECRET
    assert SIGNING_SECRET not in dump(engine)


def test_a_secret_no_key_opens_shows_in_health_and_the_others_still_deliver(
    settings: Settings, engine: Engine
) -> None:
    lost, current = generate_key(), generate_key()
    with receiver(secret=SIGNING_SECRET) as hook, receiver() as other:
        with served(settings, engine, lost) as live:
            broken = Admin(live).ok(
                "POST",
                "/api/v1/destinations",
                webhook("orders", hook.url, secret=SIGNING_SECRET),
                201,
            )
        with served(settings, engine, current) as live:
            admin = Admin(live)
            working = admin.ok("POST", "/api/v1/destinations", webhook("other", other.url), 201)
            send(live, orders(2, 2))
            wait_for(lambda: len(other.messages()) >= 4, what="the other destination")

            def reason() -> str:
                return str(health(admin, broken["id"])["last_error"] or "")

            wait_for(lambda: "TESSERA_SECRET_KEY" in reason(), what="the reason in its health")
            assert f"config.secret of the destination 'orders' ({broken['id']})" in reason()
            assert health(admin, working["id"])["last_error"] is None
            shown = health(admin, broken["id"])
            assert shown["config"]["secret"] == "********"
            check = admin.ok("POST", f"/api/v1/destinations/{broken['id']}/test")
            assert check["ok"] is False and "TESSERA_SECRET_KEY" in check["detail"]
            assert not hook.accepted

            # Entering the secret again mends it: the waiting messages go, signed.
            admin.ok(
                "PATCH",
                f"/api/v1/destinations/{broken['id']}",
                {"config": {"secret": SIGNING_SECRET}},
            )
            admin.ok("POST", f"/api/v1/destinations/{broken['id']}/resume")
            wait_for(lambda: len(hook.messages()) >= 4, what="the mended destination")
            assert hook.bad_signatures == 0
