"""The ground truth of a demo dataset, and how an identity resolver is scored against it.

A `Dataset` carries, next to its messages, who really sent them: `truth` maps each emitted
identifier ("email:jo@example.com") to a person. `pairwise_precision_recall` compares a
resolver's clustering of identifiers with it; `Dataset.evidence_clusters` is the best
clustering the messages themselves can support, the ceiling to compare a resolver with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]


@dataclass(slots=True)
class Person:
    """One real customer. `emails` are canonical (trimmed, lower case), oldest first;
    `phone` is E.164; ids list only what the person's messages actually carry."""

    key: str
    index: int
    first_name: str
    last_name: str
    city: str
    country: str
    household: int  # index of the household's first member: its members share a device
    phone: str | None = None
    emails: list[str] = field(default_factory=list)
    user_id: str | None = None
    account: str | None = None
    anonymous_ids: list[str] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=list)

    @property
    def identified(self) -> bool:
        return self.user_id is not None


@dataclass(slots=True)
class Dataset:
    """Messages in timestamp order plus the ground truth behind them.

    `truth` maps "TYPE:VALUE" (TYPE one of user_id, anonymous_id, email, phone, device_id;
    VALUE exactly as emitted, messy spacing and case included) to a person's key. Identifiers
    that truly belong to several people (a family tablet) are in `shared` instead.
    `canonical` maps each emitted email/phone key whose text is not canonical to its
    canonical key (trimmed lower-case email, E.164 phone). `owners[i]` is the index in
    `people` of whoever produced `messages[i]`.
    """

    seed: int
    region: str
    messages: list[Message]
    owners: list[int]
    people: list[Person]
    truth: dict[str, str]
    shared: set[str]
    canonical: dict[str, str]

    def batches(self, size: int = 100) -> Iterator[list[Message]]:
        """The messages in timestamp order, `size` at a time."""
        if size < 1:
            raise ValueError("batch size must be at least 1")
        for first in range(0, len(self.messages), size):
            yield self.messages[first : first + size]

    def canonical_truth(self) -> dict[str, str]:
        """`truth` keyed by canonical identifiers, for resolvers that normalise first."""
        return {self.canonical.get(key, key): person for key, person in self.truth.items()}

    def evidence_clusters(self) -> dict[str, str]:
        """The clustering the messages alone prove: identifiers in one message belong together
        (shared identifiers excepted). Scored against `truth` it gives precision 1.0 and the
        best recall any resolver can honestly reach (anonymous devices never linked stay apart).
        """
        parent: dict[str, str] = {key: key for key in self.truth}

        def root(key: str) -> str:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        for message in self.messages:
            keys = [key for key in message_identifiers(message) if key in parent]
            for other in keys[1:]:
                a, b = root(keys[0]), root(other)
                if a != b:
                    parent[b] = a
        return {key: root(key) for key in parent}


def message_identifiers(message: Message) -> list[str]:
    """The "TYPE:VALUE" identifiers one message carries (alias `previousId` as anonymous_id)."""
    found: list[str] = []
    for field_name, kind in (("userId", "user_id"), ("anonymousId", "anonymous_id")):
        if message.get(field_name):
            found.append(f"{kind}:{message[field_name]}")
    if message.get("previousId"):
        found.append(f"anonymous_id:{message['previousId']}")
    context = message.get("context") or {}
    device = context.get("device") or {}
    if device.get("id"):
        found.append(f"device_id:{device['id']}")
    for traits in (message.get("traits"), context.get("traits")):
        for trait in ("email", "phone"):
            if traits and traits.get(trait):
                found.append(f"{trait}:{traits[trait]}")
    return found


def pairwise_precision_recall(
    predicted: dict[str, str], truth: dict[str, str]
) -> tuple[float, float]:
    """Pairwise precision and recall of a clustering of identifiers.

    Only identifiers in `truth` count; one missing from `predicted` is its own cluster, and
    predicted keys not in `truth` are ignored. Over all unordered pairs of distinct truth
    identifiers: a pair is *predicted* when both share a predicted cluster id, *true* when
    both map to the same person. precision = correct predicted pairs / predicted pairs,
    recall = correct predicted pairs / true pairs; 0/0 is defined as 1.0 (no pair claimed
    means no wrong claim; no pair to find means nothing missed). O(n): pairs are counted
    from cluster sizes, n*(n-1)/2 per cluster, never enumerated.
    """
    predicted_sizes: Counter[str] = Counter()
    true_sizes: Counter[str] = Counter(truth.values())
    joint_sizes: Counter[tuple[str, str]] = Counter()
    for key, person in truth.items():
        cluster = predicted.get(key)
        if cluster is not None:
            predicted_sizes[cluster] += 1
            joint_sizes[cluster, person] += 1

    def pairs(sizes: Counter[Any]) -> int:
        return sum(n * (n - 1) // 2 for n in sizes.values())

    correct, claimed, real = pairs(joint_sizes), pairs(predicted_sizes), pairs(true_sizes)
    return (correct / claimed if claimed else 1.0, correct / real if real else 1.0)
