"""Secrets at rest: a destination's signing secret or write key (and, later, a database
source's password) is stored encrypted, so a dump of the database alone does not reveal it.

Values are encrypted with Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`) under
the key in `TESSERA_SECRET_KEY`; several keys, comma-separated and newest first, are a
`MultiFernet`: the newest encrypts, any of them decrypts, and `tessera secrets rotate`
re-encrypts every stored value under the newest, after which the older keys can go.
Without the setting, an embedded SQLite store keeps a key it generates on first start in
`tessera.key` beside the database file (mode 0600); PostgreSQL, shared by many processes,
needs the setting.

An encrypted value is `fernet:` followed by the token, so it can be told from the plain
text that stores written before this module hold; those are read as they are until the
start-up step or `rotate` encrypts them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from tessera.errors import ConfigurationError, TesseraError

PREFIX = "fernet:"
KEY_FILE_NAME = "tessera.key"
SETTING = "TESSERA_SECRET_KEY"
KEY_FORMAT = (
    "32 url-safe base64-encoded bytes (44 characters, as `tessera secrets generate-key` prints)"
)
HOW_TO_MAKE_ONE = (
    "make one with `tessera secrets generate-key` (or python -c "
    '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")'
)


class SecretKeyError(ConfigurationError):
    """The key to encrypt secrets with is missing, unreadable or malformed."""


class SecretUnreadable(TesseraError):
    """A stored secret cannot be decrypted with any of the configured keys."""


def generate_key() -> str:
    """A new random key, in the form TESSERA_SECRET_KEY takes."""
    return Fernet.generate_key().decode()


def parse_keys(text: str, *, origin: str = SETTING) -> list[bytes]:
    """The keys in `text` (comma- or whitespace-separated, newest first). A message never
    shows a key, only its position."""
    parts = [part for part in text.replace(",", " ").split() if part]
    if not parts:
        raise SecretKeyError(f"{origin} holds no key; it takes {KEY_FORMAT}, newest first")
    keys = []
    for position, part in enumerate(parts, start=1):
        try:
            raw = base64.urlsafe_b64decode(part.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise SecretKeyError(
                f"key {position} of {len(parts)} in {origin} is not {KEY_FORMAT}; {HOW_TO_MAKE_ONE}"
            )
        keys.append(part.encode("ascii"))
    return keys


def is_encrypted(value: str) -> bool:
    return value.startswith(PREFIX)


class Keyring:
    """The configured keys: the first encrypts, any decrypts. `origin` says where they came
    from (the setting or the key file), for messages."""

    def __init__(self, keys: Sequence[bytes], *, origin: str = SETTING) -> None:
        self.keys = list(keys)
        self.origin = origin
        self._cipher = MultiFernet([Fernet(key) for key in self.keys])

    def encrypt(self, plain: str) -> str:
        return PREFIX + self._cipher.encrypt(plain.encode()).decode()

    def decrypt(self, stored: str, *, what: str = "a stored secret") -> str:
        """The plain value; a value without the prefix is legacy plain text, read as is."""
        if not is_encrypted(stored):
            return stored
        try:
            return self._cipher.decrypt(stored[len(PREFIX) :].encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise SecretUnreadable(self._unreadable(what)) from None

    def rotate(self, stored: str, *, what: str = "a stored secret") -> str:
        """`stored` encrypted under the newest key (legacy plain text is encrypted)."""
        if not is_encrypted(stored):
            return self.encrypt(stored)
        try:
            return PREFIX + self._cipher.rotate(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(self._unreadable(what)) from None

    def _unreadable(self, what: str) -> str:
        return (
            f"{what} cannot be decrypted with the {len(self.keys)} key(s) in {self.origin}: it "
            f"was encrypted under another key. Put that key back in {SETTING} (after the "
            "newest, comma-separated), or enter the secret again"
        )


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` with `change` applied to every string in it (a dict's values, a list's
    items): a secret field may be a string, or a list or dict of them."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {name: _map_strings(item, change) for name, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def seal(value: Any, keyring: Keyring, *, given: bool) -> Any:
    """`value` with every string in it encrypted, for a secret field of a config. A value
    read from the store (`given=False`) that is encrypted already stays as it is; a value
    someone just gave is always encrypted, even one that happens to start with the prefix."""

    def encrypt(text: str) -> str:
        return text if not given and is_encrypted(text) else keyring.encrypt(text)

    return _map_strings(value, encrypt)


def unseal(value: Any, keyring: Keyring, *, what: str) -> Any:
    """The inverse of `seal`; legacy plain text comes back as it is."""
    return _map_strings(value, lambda text: keyring.decrypt(text, what=what))


def reseal(value: Any, keyring: Keyring, *, what: str) -> Any:
    """`value` with every string in it encrypted under the newest key (rotation)."""
    return _map_strings(value, lambda text: keyring.rotate(text, what=what))


def has_plain_text(value: Any) -> bool:
    """Whether `value` (a secret field's) holds a string not yet encrypted."""
    return any(not is_encrypted(text) for text in _strings(value))


# -- where the key comes from ----------------------------------------------------------


def key_file_path(database_url: str) -> Path | None:
    """`tessera.key` beside a SQLite database file; None for other stores."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database).expanduser().resolve().parent / KEY_FILE_NAME


def load_keyring(*, secret_key: SecretStr | None, database_url: str) -> Keyring:
    """The keys from the setting; or, for SQLite without it, from the key file (generated
    on first start). Raises SecretKeyError naming the setting and what to do."""
    if secret_key is not None:
        return Keyring(parse_keys(secret_key.get_secret_value()))
    path = key_file_path(database_url)
    if path is None:
        raise SecretKeyError(
            f"{SETTING} is not set. A PostgreSQL store needs it, the same in every Tessera "
            f"process, to encrypt the secrets it stores (destination secrets, write keys); "
            f"{HOW_TO_MAKE_ONE}, and set {SETTING} to it"
        )
    origin = f"the key file {path}"
    if not path.exists():
        _create_key_file(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise SecretKeyError(
            f"cannot read {origin} ({reason}); it holds the key this store's secrets are "
            f"encrypted with. Make it readable by Tessera, or set {SETTING} to the key"
        ) from None
    return Keyring(parse_keys(text, origin=origin), origin=origin)


def _create_key_file(path: Path) -> None:
    """Write a new key, readable by its owner only. Written aside and linked into place, so
    two processes starting at once agree on one key and nobody reads half a file."""
    if not path.parent.is_dir():
        raise SecretKeyError(f"cannot create the key file {path}: {path.parent} is not a directory")
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(generate_key() + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use it
            os.link(aside, path)
    except OSError as exc:
        raise SecretKeyError(
            f"cannot create the key file {path} ({exc.strerror}); set {SETTING} instead"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)
