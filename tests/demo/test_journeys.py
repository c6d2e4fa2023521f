"""The demo generator: deterministic, valid Segment messages, and ground truth that holds."""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.demo import (
    Dataset,
    demo_summary,
    generate,
    message_identifiers,
    pairwise_precision_recall,
    send,
)
from tessera.eventlog import list_events
from tessera.ingest.messages import MESSAGE_TYPES, normalise_message
from tests.conftest import LiveTessera

PEOPLE = 2_000


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(seed=42, people=PEOPLE)


def dumps(data: Dataset) -> bytes:
    return orjson.dumps(data.messages)


def test_same_seed_same_dataset_other_seed_other_dataset() -> None:
    first, again = generate(seed=7, people=150), generate(seed=7, people=150)
    assert dumps(first) == dumps(again)
    assert first.truth == again.truth and first.shared == again.shared
    assert first.people == again.people
    assert dumps(generate(seed=8, people=150)) != dumps(first)


def test_start_defaults_to_a_fixed_day_and_bounds_every_timestamp() -> None:
    start = datetime(2027, 1, 10, tzinfo=UTC)
    for data, first, days in (
        (generate(seed=1, people=100), datetime(2026, 9, 1, tzinfo=UTC), 60),
        (generate(seed=1, people=100, start=start, days=10), start, 10),
    ):
        stamps = [message["timestamp"] for message in data.messages]
        assert stamps == sorted(stamps)
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps)
        low, high = (datetime.fromisoformat(s) for s in (stamps[0], stamps[-1]))
        assert first <= low and high < first + timedelta(days=days)


def test_every_message_passes_tesseras_own_validator(dataset: Dataset) -> None:
    now = datetime.now(UTC)
    for message in dataset.messages:
        normalise_message(message, source_id=1, received_at=now)


def test_message_ids_are_unique_and_differ_between_datasets(dataset: Dataset) -> None:
    ids = [message["messageId"] for message in dataset.messages]
    assert len(set(ids)) == len(ids)
    other = generate(seed=43, people=PEOPLE)
    assert not set(ids) & {message["messageId"] for message in other.messages}


def test_truth_covers_exactly_the_identifiers_emitted(dataset: Dataset) -> None:
    emitted = {key for message in dataset.messages for key in message_identifiers(message)}
    assert emitted == set(dataset.truth) | dataset.shared
    assert not set(dataset.truth) & dataset.shared
    kinds = Counter(key.split(":", 1)[0] for key in dataset.truth)
    assert set(kinds) == {"user_id", "anonymous_id", "email", "phone", "device_id"}


def test_each_message_names_its_senders_identifiers(dataset: Dataset) -> None:
    for message, owner in zip(dataset.messages, dataset.owners, strict=True):
        person = dataset.people[owner].key
        for key in message_identifiers(message):
            assert dataset.truth.get(key, person) == person, (key, message)


def test_messages_never_link_two_people_except_through_shared_identifiers(
    dataset: Dataset,
) -> None:
    precision, recall = pairwise_precision_recall(dataset.evidence_clusters(), dataset.truth)
    assert precision == 1.0
    # Anonymous-only devices of known people cannot be linked: a resolver's ceiling.
    assert 0.8 < recall < 1.0


def test_journey_mix(dataset: Dataset) -> None:
    types = Counter(message["type"] for message in dataset.messages)
    assert set(types) == set(MESSAGE_TYPES)
    events = Counter(message.get("event") for message in dataset.messages)
    for event in ("Product Viewed", "Product Added", "Cart Viewed", "Products Searched",
                  "Signed Up", "Signed In", "Checkout Started", "Order Completed",
                  "Order Refunded", "Email Opened", "Email Link Clicked",
                  "Support Ticket Opened"):  # fmt: skip
        assert events[event] > 0, event
    per_person = Counter(dataset.owners)
    assert len(per_person) == PEOPLE
    assert min(per_person.values()) >= 5
    assert max(per_person.values()) <= 60
    anonymous = sum(1 for person in dataset.people if not person.identified)
    assert 0.2 < anonymous / PEOPLE < 0.4
    assert {p.key for p in dataset.people if p.identified} == {
        person for key, person in dataset.truth.items() if key.startswith("user_id:")
    }


def test_orders_carry_the_ecommerce_fields(dataset: Dataset) -> None:
    orders = [m for m in dataset.messages if m.get("event") == "Order Completed"]
    for order in orders:
        props = order["properties"]
        assert {"order_id", "total", "revenue", "currency", "products"} <= set(props)
        assert order["userId"] and props["products"]
    viewed = next(m for m in dataset.messages if m.get("event") == "Product Viewed")
    assert {"product_id", "sku", "name", "category", "price", "currency"} <= set(
        viewed["properties"]
    )
    refunds = [m for m in dataset.messages if m.get("event") == "Order Refunded"]
    assert {m["properties"]["order_id"] for m in refunds} <= {
        order["properties"]["order_id"] for order in orders
    }


def test_second_device_logins_stitch_a_user_to_several_anonymous_ids(dataset: Dataset) -> None:
    anonymous_ids: dict[str, set[str]] = defaultdict(set)
    for message in dataset.messages:
        if message["type"] == "identify" and message.get("anonymousId"):
            anonymous_ids[message["userId"]].add(message["anonymousId"])
    assert sum(1 for ids in anonymous_ids.values() if len(ids) > 1) > 20


def test_server_side_messages_carry_only_the_user_id(dataset: Dataset) -> None:
    opened = [m for m in dataset.messages if m.get("event") == "Email Opened"]
    assert opened
    for message in opened:
        assert "anonymousId" not in message and message["userId"]
        assert message["context"]["traits"]["email"]
        assert (
            dataset.truth[f"email:{message['context']['traits']['email']}"]
            == (dataset.truth[f"user_id:{message['userId']}"])
        )


def test_alias_and_group_calls(dataset: Dataset) -> None:
    aliases = [m for m in dataset.messages if m["type"] == "alias"]
    assert aliases
    for alias in aliases:
        assert (
            dataset.truth[f"anonymous_id:{alias['previousId']}"]
            == (dataset.truth[f"user_id:{alias['userId']}"])
        )
    groups = [m for m in dataset.messages if m["type"] == "group"]
    assert groups
    assert all(g["groupId"] and {"name", "plan"} <= set(g["traits"]) for g in groups)


def test_email_changes_keep_both_addresses_on_one_person(dataset: Dataset) -> None:
    changed = [person for person in dataset.people if len(person.emails) > 1]
    assert len(changed) > 10
    canonical = dataset.canonical_truth()
    for person in changed:
        assert {canonical[f"email:{email}"] for email in person.emails} == {person.key}


def test_emails_are_sometimes_typed_with_capitals_and_spaces(dataset: Dataset) -> None:
    emails = [key[len("email:") :] for key in dataset.truth if key.startswith("email:")]
    messy = [email for email in emails if email != email.strip().lower()]
    assert any(email != email.strip() for email in messy)
    assert any(email.strip() != email.strip().lower() for email in messy)
    for email in messy:
        assert dataset.canonical[f"email:{email}"] == f"email:{email.strip().lower()}"


def test_family_tablets_are_shared_by_two_signed_in_people(dataset: Dataset) -> None:
    tablets = {key.split(":", 1)[1] for key in dataset.shared if key.startswith("anonymous_id:")}
    assert len(tablets) >= 5
    users: dict[str, set[str]] = defaultdict(set)
    for message in dataset.messages:
        if message.get("anonymousId") in tablets and message["type"] == "identify":
            users[message["anonymousId"]].add(dataset.truth[f"user_id:{message['userId']}"])
    assert all(len(users[tablet]) == 2 for tablet in tablets)


def shape(phone: str) -> str:
    return re.sub(r"\d", "9", phone)


NATIONAL_SHAPES = {
    "US": {"phone:(999) 999-9999", "phone:999.999.9999", "phone:9999999999"},
    "GB": {"phone:999 9999 9999", "phone:99999 999999", "phone:+99 (9)99 9999 9999"},
}


@pytest.mark.parametrize("region", ["US", "GB"])
def test_phone_formats_vary_and_map_to_one_canonical_number(region: str) -> None:
    data = generate(seed=5, people=1_000, region=region)
    phones = [key for key in data.truth if key.startswith("phone:")]
    shapes = {shape(key) for key in phones}
    assert len(shapes) >= 8
    assert NATIONAL_SHAPES[region] <= shapes
    numbers = {person.phone for person in data.people if person.phone}
    for key in phones:
        assert data.canonical.get(key, key)[len("phone:") :] in numbers
    abroad = "+44" if region == "US" else "+1"  # visitors from the other region
    assert any(number.startswith(abroad) for number in numbers)


def test_phones_parse_back_to_their_canonical_number_with_libphonenumber() -> None:
    phonenumbers = pytest.importorskip("phonenumbers")
    for region in ("US", "GB"):
        data = generate(seed=9, people=600, region=region)
        for key in (key for key in data.truth if key.startswith("phone:")):
            number = phonenumbers.parse(key[len("phone:") :], region)
            assert phonenumbers.is_valid_number(number), key
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            assert f"phone:{e164}" == data.canonical.get(key, key)


def test_batches_and_summary(dataset: Dataset) -> None:
    batches = list(dataset.batches(300))
    assert [len(b) for b in batches[:-1]] == [300] * (len(batches) - 1)
    assert [m for batch in batches for m in batch] == dataset.messages
    summary = demo_summary(dataset)
    assert summary["messages"] == len(dataset.messages)
    assert sum(summary[kind] for kind in MESSAGE_TYPES) == summary["messages"]
    assert summary["people"] == PEOPLE
    assert summary["identified_people"] + summary["anonymous_people"] == PEOPLE
    assert summary["devices"] > PEOPLE and summary["shared_devices"] >= 5


# -- pairwise precision and recall ------------------------------------------------------

TRUTH = {"a": "p1", "b": "p1", "c": "p1", "d": "p2", "e": "p2", "f": "p3"}


def test_perfect_clustering() -> None:
    assert pairwise_precision_recall({k: f"c-{v}" for k, v in TRUTH.items()}, TRUTH) == (1, 1)


def test_everything_in_one_cluster_finds_every_pair_but_claims_wrong_ones() -> None:
    precision, recall = pairwise_precision_recall(dict.fromkeys(TRUTH, "all"), TRUTH)
    assert recall == 1.0
    assert precision == pytest.approx(4 / 15)  # 3 + 1 true pairs among 15


def test_all_singletons_claim_nothing_wrong_and_find_nothing() -> None:
    assert pairwise_precision_recall({k: k for k in TRUTH}, TRUTH) == (1.0, 0.0)
    assert pairwise_precision_recall({}, TRUTH) == (1.0, 0.0)


def test_keys_outside_truth_are_ignored_and_missing_keys_are_singletons() -> None:
    predicted = {"a": "x", "b": "x", "zzz": "x", "d": "y", "e": "y"}
    precision, recall = pairwise_precision_recall(predicted, TRUTH)
    assert precision == 1.0 and recall == pytest.approx(2 / 4)
    assert pairwise_precision_recall({}, {}) == (1.0, 1.0)


def brute_force(predicted: dict[str, str], truth: dict[str, str]) -> tuple[float, float]:
    correct = claimed = real = 0
    for x, y in itertools.combinations(sorted(truth), 2):
        same_cluster = x in predicted and y in predicted and predicted[x] == predicted[y]
        same_person = truth[x] == truth[y]
        claimed += same_cluster
        real += same_person
        correct += same_cluster and same_person
    return (correct / claimed if claimed else 1.0, correct / real if real else 1.0)


keys = st.sampled_from([f"email:{n}" for n in range(12)] + [f"user_id:{n}" for n in range(6)])


@settings(max_examples=300, deadline=None)
@given(
    truth=st.dictionaries(keys, st.sampled_from(["p1", "p2", "p3", "p4"]), max_size=18),
    predicted=st.dictionaries(keys, st.sampled_from(["c1", "c2", "c3", "p1"]), max_size=18),
)
def test_precision_recall_matches_brute_force(
    truth: dict[str, str], predicted: dict[str, str]
) -> None:
    fast = pairwise_precision_recall(predicted, truth)
    assert fast == pytest.approx(brute_force(predicted, truth))


# -- through the real API ---------------------------------------------------------------


def test_a_small_dataset_sent_through_the_api_is_stored_in_full(live: LiveTessera) -> None:
    data = generate(seed=3, people=20)
    acknowledged: list[int] = []
    sent = send(data, base_url=live.url, write_key=live.write_key, batch_size=50,
                progress=acknowledged.append)  # fmt: skip
    assert sent == sum(acknowledged) == len(data.messages)
    with live.engine.connect() as conn:
        rows = list_events(conn, limit=100_000)
    assert len(rows) == len(data.messages)
    assert {row["message_id"] for row in rows} == {m["messageId"] for m in data.messages}
    stored = {row["message_id"]: row["payload"]["timestamp"] for row in rows}
    assert all(stored[m["messageId"]] == m["timestamp"] for m in data.messages)
