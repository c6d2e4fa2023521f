"""Forms generated from a JSON schema: each kind of field gets its control, what a form
shows reads back to the same values (a property over generated configs), pydantic's errors
land on their field in words, and a third-party destination plugin gets a working create
form without any code of its own in the web layer."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from tessera.activation import plugins
from tessera.activation.plugins import ConnectionCheck, Destination
from tessera.activation.webhook import WebhookConfig
from tessera.web.schema_form import (
    FormField,
    field_errors,
    form_fields,
    humanise,
    read_form,
    shown_values,
    walk,
)
from tests.conftest import LiveTessera
from tests.web.test_destinations_pages import Admin, Person, error_of


class Region(StrEnum):
    EU = "eu"
    US = "us"


class Auth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(description="The OAuth client's `id`.")
    scopes: list[str] = []


class CRMConfig(BaseModel):
    """A third-party plugin's config, with a field of every kind."""

    model_config = ConfigDict(extra="forbid")

    api_url: AnyHttpUrl
    api_key: SecretStr
    region: Region = Region.EU
    mode: Literal["upsert", "insert"] = "upsert"
    auth: Auth
    tags: list[str] = []
    retries: int = Field(default=3, ge=0, le=10)
    rate_per_second: float = Field(default=2.5, gt=0)
    dry_run: bool = False
    weights: dict[str, int] = {}
    owner_ids: list[int] = []
    kinds: list[Literal["lead", "contact"]] = ["contact"]
    note: str | None = None


class CRMDestination(Destination):
    title: ClassVar[str] = "Acme CRM"
    description: ClassVar[str] = "Upsert contacts into Acme CRM."
    config_model: ClassVar[type[BaseModel]] = CRMConfig

    async def test_connection(self) -> ConnectionCheck:
        return ConnectionCheck(True, "Acme CRM answered")

    async def deliver(self, messages: Any) -> None:
        return None


class Posted:
    """A posted form as Starlette gives it: `get` the last value, `getlist` them all."""

    def __init__(self, values: dict[str, list[str]] | None = None) -> None:
        self.values = dict(values or {})

    def __setitem__(self, key: str, value: list[str]) -> None:
        self.values[key] = value

    def get(self, key: str) -> Any:
        found = self.values.get(key, [])
        return found[-1] if found else None

    def getlist(self, key: str) -> list[str]:
        return list(self.values.get(key, []))


def as_posted(fields: list[FormField], shown: dict[str, Any]) -> Posted:
    """What a browser posts for a form showing `shown` (unticked boxes are absent)."""
    posted = Posted()
    for item in walk(fields):
        if item.kind == "group":
            continue
        value = shown[item.name]
        if item.kind == "boolean":
            if value:
                posted[item.name] = ["true"]
        elif item.kind == "choices":
            posted[item.name] = list(value)
        else:
            posted[item.name] = [value]
    return posted


def by_name(fields: list[FormField]) -> dict[str, FormField]:
    return {item.name: item for item in walk(fields)}


def test_every_kind_of_field_gets_its_control() -> None:
    fields = by_name(form_fields(CRMConfig.model_json_schema(), prefix="config."))
    kinds = {name: item.kind for name, item in fields.items()}
    assert kinds == {
        "config.api_url": "url",
        "config.api_key": "secret",
        "config.region": "choice",
        "config.mode": "choice",
        "config.auth": "group",
        "config.auth.client_id": "text",
        "config.auth.scopes": "lines",
        "config.tags": "lines",
        "config.retries": "integer",
        "config.rate_per_second": "number",
        "config.dry_run": "boolean",
        "config.weights": "json",
        "config.owner_ids": "lines",
        "config.kinds": "choices",
        "config.note": "text",
    }
    assert fields["config.region"].options == [("eu", "eu"), ("us", "us")]
    assert fields["config.retries"].minimum == 0 and fields["config.retries"].maximum == 10
    assert fields["config.retries"].advanced and not fields["config.api_url"].advanced
    assert fields["config.note"].nullable and not fields["config.api_url"].nullable
    assert fields["config.api_url"].label == "API URL"
    assert str(fields["config.auth.client_id"].hint) == "The OAuth client&#39;s <code>id</code>."
    assert fields["config.api_key"].required


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("timeout_seconds", "Timeout (seconds)"),
        ("audience_id", "Audience ID"),
        ("url", "URL"),
        ("max_messages_per_file", "Max messages per file"),
        ("write_key", "Write key"),
    ],
)
def test_labels_read_as_words(key: str, label: str) -> None:
    assert humanise(key) == label


rich_values = st.fixed_dictionaries(
    {
        "api_url": st.sampled_from(["https://acme.example/api", "http://127.0.0.1:8080/v2"]),
        "api_key": st.text("xyz!#$ 789", min_size=1, max_size=12),
        "region": st.sampled_from(["eu", "us"]),
        "mode": st.sampled_from(["upsert", "insert"]),
        "auth": st.fixed_dictionaries(
            {
                "client_id": st.text("abcdef-_0123", min_size=1, max_size=12),
                "scopes": st.lists(st.text("abc:.", min_size=1, max_size=8), max_size=3),
            }
        ),
        "tags": st.lists(st.text("abcxyz ", min_size=1).map(str.strip).filter(bool), max_size=4),
        "retries": st.integers(0, 10),
        "rate_per_second": st.floats(0.001, 1e6, allow_nan=False),
        "dry_run": st.booleans(),
        "weights": st.dictionaries(st.text("abc", min_size=1, max_size=4), st.integers(-5, 5)),
        "owner_ids": st.lists(st.integers(-(10**9), 10**9), max_size=4),
        # Ticked boxes post in the options' order: a set of choices, not a sequence.
        "kinds": st.sets(st.sampled_from(["lead", "contact"])).map(
            lambda picked: [kind for kind in ("lead", "contact") if kind in picked]
        ),
        "note": st.none() | st.text("a b.c", min_size=1, max_size=10).map(str.strip).filter(bool),
    }
)


@settings(max_examples=150, deadline=None)
@given(values=rich_values)
def test_what_a_form_shows_reads_back_as_the_same_config(values: dict[str, Any]) -> None:
    fields = form_fields(CRMConfig.model_json_schema(), prefix="config.")
    shown = shown_values(fields, values)
    posted = as_posted(fields, shown)
    # Secrets are never shown back: the person types them again.
    posted["config.api_key"] = [values["api_key"]]
    read = read_form(fields, posted)
    assert read.errors == {}
    again, expected = CRMConfig.model_validate(read.values), CRMConfig.model_validate(values)
    assert again.model_dump(exclude={"api_key"}) == expected.model_dump(exclude={"api_key"})
    assert again.api_key.get_secret_value() == values["api_key"]


def test_a_blank_stored_secret_reads_as_kept_and_a_new_one_replaces_it() -> None:
    fields = form_fields(WebhookConfig.model_json_schema(), prefix="config.")
    shown = shown_values(fields, {"url": "https://e.com/x", "secret": "********"})
    assert shown["config.secret"] == ""
    posted = as_posted(fields, shown)
    kept = read_form(fields, posted, stored_secrets=["secret"], keep_secret="********")
    assert kept.values["secret"] == "********"
    posted["config.secret"] = ["new one"]
    assert (
        read_form(fields, posted, stored_secrets=["secret"], keep_secret="*").values["secret"]
        == "new one"
    )
    posted["config.secret"] = [""]
    posted["config.secret__remove"] = ["true"]
    assert (
        read_form(fields, posted, stored_secrets=["secret"], keep_secret="*").values["secret"]
        is None
    )
    fresh = read_form(fields, Posted({"config.url": ["https://e.com"]}))
    assert fresh.values["secret"] is None and fresh.values["timeout_seconds"] == 10.0


def test_errors_land_on_their_field_in_words() -> None:
    fields = form_fields(CRMConfig.model_json_schema(), prefix="config.")
    posted = Posted(
        {
            "config.api_url": ["not a url"],
            "config.retries": ["11"],
            "config.rate_per_second": ["fast"],
            "config.weights": ['{"a": 1,'],
            "config.auth.client_id": [""],
        }
    )
    read = read_form(fields, posted)
    assert read.errors == {
        "config.weights": "This is not valid JSON: expecting property name enclosed in double "
        "quotes (line 1, column 9)."
    }
    with pytest.raises(ValidationError) as caught:
        CRMConfig.model_validate(read.values)
    errors = field_errors(caught.value, fields)
    assert errors["config.api_url"] == "Enter a full address, like https://example.com/hook."
    assert errors["config.retries"] == "Use 10 or less."
    assert errors["config.rate_per_second"] == "Enter a number, like 2.5."
    assert errors["config.auth.client_id"] == "Fill this in."
    assert errors["config.api_key"] == "Fill this in."


@pytest.fixture
def acme_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Acme's plugin registered in the destinations' entry-point group, beside ours."""
    real = importlib.metadata.entry_points

    class Entry:
        name = "acme_crm"

        @staticmethod
        def load() -> type[Destination]:
            return CRMDestination

    def entry_points(*, group: str) -> list[Any]:
        found = list(real(group=group))
        return [*found, Entry()] if group == plugins.ENTRY_POINT_GROUP else found

    monkeypatch.setattr("tessera.activation.plugins.entry_points", entry_points)
    yield


def test_a_third_party_plugin_gets_a_form_for_free(live: LiveTessera, acme_installed: None) -> None:
    marketer = Person(live, "marketer")
    assert "Upsert contacts into Acme CRM." in marketer.get("/destinations/new")
    html = marketer.get("/destinations/new/acme_crm")
    assert re.search(r'<select id="field-config-region" name="config.region"', html)
    assert re.search(r'name="config.api_key" type="password"', html)
    assert '<fieldset class="field-group">' in html and 'type="checkbox" value="true"' in html
    form = {
        "name": "Acme",
        "config.api_url": "https://acme.example/api",
        "config.region": "us",
        "config.mode": "insert",
        "config.auth.client_id": "tessera",
        "config.api_key": "hush",
        "config.tags": "vip\nnewsletter",
        "config.retries": "12",
        "config.rate_per_second": "4",
        "config.dry_run": "true",
        "config.kinds": "lead",
    }
    html = marketer.post("/destinations/new/acme_crm", form, status=422).text
    assert error_of(html, "field-config-retries") == "Use 10 or less."
    response = marketer.post("/destinations/new/acme_crm", {**form, "config.retries": "2"})
    found = response.headers["location"].rsplit("/", 1)[1]
    config = Admin(live).ok("GET", f"/api/v1/destinations/{found}")["config"]
    assert config["api_key"] == "********"  # stored sealed, never shown back
    assert config["region"] == "us" and config["tags"] == ["vip", "newsletter"]
    assert config["retries"] == 2 and config["dry_run"] is True and config["kinds"] == ["lead"]
