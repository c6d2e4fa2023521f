"""The event log: append accepted messages durably, read them back in order."""

from __future__ import annotations

from tessera.eventlog.service import NewEvent, append_events, count_events, list_events
from tessera.eventlog.writer import EventLogWriter

__all__ = ["EventLogWriter", "NewEvent", "append_events", "count_events", "list_events"]
