"""What `tessera demo` prints about a generated dataset before and after sending it."""

from __future__ import annotations

from collections import Counter

from tessera.demo.truth import Dataset
from tessera.ingest.messages import MESSAGE_TYPES


def demo_summary(dataset: Dataset) -> dict[str, int]:
    """Counts for the CLI: messages (and per type), people (identified or not), devices,
    orders, and identifiers shared by several people.

    Keys, in display order: messages, identify, track, page, screen, group, alias, people,
    identified_people, anonymous_people, devices, shared_devices, orders, identifiers.
    """
    types = Counter(message["type"] for message in dataset.messages)
    identified = sum(1 for person in dataset.people if person.identified)
    devices = {device for person in dataset.people for device in person.device_ids}
    shared_devices = sum(1 for key in dataset.shared if key.startswith("device_id:"))
    orders = sum(1 for message in dataset.messages if message.get("event") == "Order Completed")
    return {
        "messages": len(dataset.messages),
        **{kind: types.get(kind, 0) for kind in MESSAGE_TYPES},
        "people": len(dataset.people),
        "identified_people": identified,
        "anonymous_people": len(dataset.people) - identified,
        "devices": len(devices),
        "shared_devices": shared_devices,
        "orders": orders,
        "identifiers": len(dataset.truth) + len(dataset.shared),
    }
