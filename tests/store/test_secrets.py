"""Secrets at rest: encryption under the configured keys, rotation, legacy plain text, and
where the key comes from (the setting, or the key file generated beside a SQLite store)."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pydantic
import pytest
from pydantic import SecretStr

from tessera.config import Settings
from tessera.store.secrets import (
    Keyring,
    SecretKeyError,
    SecretUnreadable,
    generate_key,
    is_encrypted,
    load_keyring,
    parse_keys,
    seal,
    unseal,
)

POSTGRES = "postgresql+psycopg://tessera@db.internal/tessera"


def keyring(*keys: str) -> Keyring:
    return Keyring(parse_keys(",".join(keys)))


def test_an_encrypted_value_is_recognisable_and_reads_back() -> None:
    keys = keyring(generate_key())
    stored = keys.encrypt("whsec_123")
    assert is_encrypted(stored) and "whsec_123" not in stored
    assert keys.decrypt(stored) == "whsec_123"
    # The same value encrypts differently each time: equal secrets do not show as equal.
    assert keys.encrypt("whsec_123") != stored


def test_plain_text_from_before_encryption_reads_as_it_is() -> None:
    keys = keyring(generate_key())
    assert not is_encrypted("whsec_legacy")
    assert keys.decrypt("whsec_legacy") == "whsec_legacy"
    assert is_encrypted(keys.rotate("whsec_legacy"))


def test_rotation_moves_values_to_the_newest_key() -> None:
    old, new = generate_key(), generate_key()
    stored = keyring(old).encrypt("s3cret")
    both = keyring(new, old)
    assert both.decrypt(stored) == "s3cret"  # the old key still opens it
    rotated = both.rotate(stored)
    assert keyring(new).decrypt(rotated) == "s3cret"
    with pytest.raises(SecretUnreadable):
        keyring(old).decrypt(rotated)
    # What the newest key encrypts, the newest key alone reads.
    assert keyring(new).decrypt(both.encrypt("fresh")) == "fresh"


def test_a_value_no_key_opens_is_a_clear_error() -> None:
    stored = keyring(generate_key()).encrypt("s3cret")
    with pytest.raises(SecretUnreadable) as caught:
        keyring(generate_key()).decrypt(stored, what="config.secret of the destination 'x'")
    message = str(caught.value)
    assert "config.secret of the destination 'x'" in message
    assert "TESSERA_SECRET_KEY" in message


def test_seal_encrypts_every_string_of_a_field_once() -> None:
    keys = keyring(generate_key())
    value = {"access_key": "AKIA", "tokens": ["a", "b"], "port": 3}
    sealed = seal(value, keys, given=True)
    assert sealed["port"] == 3 and all(is_encrypted(t) for t in sealed["tokens"])
    assert unseal(sealed, keys, what="x") == value
    # Read back from the store, encrypted values stay as they are (no double encryption) ...
    assert seal(sealed, keys, given=False) == sealed
    # ... but a value someone gives is encrypted even if it looks encrypted.
    assert unseal(seal("fernet:abc", keys, given=True), keys, what="x") == "fernet:abc"


@pytest.mark.parametrize(
    "text",
    ["", "not-a-key", "c2hvcnQ=", f"{generate_key()},{generate_key()[:-4]}"],
)
def test_a_malformed_setting_is_refused_naming_the_format_not_the_value(text: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(secret_key=text)
    message = str(caught.value)
    assert "TESSERA_SECRET_KEY" in message
    assert "32 url-safe base64-encoded bytes" in message
    assert "tessera secrets generate-key" in message
    if text:
        assert text.rsplit(",", maxsplit=1)[-1] not in message


def test_several_keys_newest_first_are_accepted() -> None:
    new, old = generate_key(), generate_key()
    settings = Settings(secret_key=f"{new}, {old}")
    keys = load_keyring(secret_key=settings.secret_key, database_url=settings.database_url)
    assert keys.keys == [new.encode(), old.encode()]


def test_postgresql_without_a_key_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(SecretKeyError) as caught:
        load_keyring(secret_key=None, database_url=POSTGRES)
    message = str(caught.value)
    assert "TESSERA_SECRET_KEY is not set" in message
    assert "tessera secrets generate-key" in message
    assert "Fernet.generate_key()" in message


def test_sqlite_generates_a_private_key_file_on_first_start_and_reads_it_after(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'tessera.db'}"
    first = load_keyring(secret_key=None, database_url=url)
    path = tmp_path / "tessera.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.origin == f"the key file {path}"
    again = load_keyring(secret_key=None, database_url=url)
    assert again.decrypt(first.encrypt("s3cret")) == "s3cret"
    assert [p.name for p in tmp_path.iterdir()] == ["tessera.key"]  # nothing left aside


def test_the_setting_wins_over_the_key_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tessera.db'}"
    key = generate_key()
    keys = load_keyring(secret_key=SecretStr(key), database_url=url)
    assert keys.keys == [key.encode()] and not (tmp_path / "tessera.key").exists()


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tessera.db'}"
    found: list[Keyring] = []
    threads = [
        threading.Thread(
            target=lambda: found.append(load_keyring(secret_key=None, database_url=url))
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({tuple(keys.keys) for keys in found}) == 1


def test_a_malformed_key_file_stops_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "tessera.key").write_text("not a key\n")
    with pytest.raises(SecretKeyError) as caught:
        load_keyring(secret_key=None, database_url=f"sqlite:///{tmp_path / 'tessera.db'}")
    message = str(caught.value)
    assert str(tmp_path / "tessera.key") in message
    assert "32 url-safe base64-encoded bytes" in message


def test_an_unreadable_key_file_stops_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "tessera.key").mkdir()  # unreadable as a file, even for root
    with pytest.raises(SecretKeyError) as caught:
        load_keyring(secret_key=None, database_url=f"sqlite:///{tmp_path / 'tessera.db'}")
    message = str(caught.value)
    assert f"cannot read the key file {tmp_path / 'tessera.key'}" in message
    assert "TESSERA_SECRET_KEY" in message
