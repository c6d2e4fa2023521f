"""The running state of one computed trait for one person, one class per family of kinds.

Times are integer microseconds since the epoch, so windows, expiry and `next_change` are
exact. A windowed event at `at` counts while `at > now - window`. `horizon` is the latest
cutoff `expire` has applied: an event at or before it can never count again, so a late
one is not even stored. Windowed states keep one entry per event up to `MAX_ENTRIES`;
past that they coalesce entries onto an aligned grid of `resolution` microseconds (the
finest of `_GRID` that fits in `COALESCED_ENTRIES`). A coalesced entry expires with its
latest event, so an older event in it may count up to one grid step late; "any event in
the window" and the moment the last one leaves stay exact.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Iterable
from datetime import datetime, timedelta
from itertools import accumulate
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from tessera.conditions import MISSING, as_number, is_number

if TYPE_CHECKING:
    from tessera.profiles.computed import ComputedTraitSpec

MAX_ENTRIES = 1000
COALESCED_ENTRIES = 750  # after coalescing, so it is not needed again at the next event
MAX_VALUES = 100  # distinct values most_frequent tracks (all time, or in a window)
FAR_PAST = -(1 << 62)
# Each step divides the next, so an entry coalesced at one step lies in one cell of the next.
_GRID = [s * 1_000_000 for s in (1, 2, 10, 30, 60, 120, 600, 1800, 3600, 7200, 21600, 43200, 86400)]
_NAIVE_EPOCH = datetime(1970, 1, 1)

State = TypeVar("State", bound="TraitState")


def iso_utc(micros: int) -> str:
    """`2026-11-22T10:00:00.000Z`, the format of event timestamps in the log."""
    moment = _NAIVE_EPOCH + timedelta(microseconds=micros)
    return moment.isoformat(timespec="milliseconds") + "Z"


def json_number(number: float) -> int | float | None:
    """Integral floats as ints (`3` not `3.0`); None for a sum that overflowed."""
    if not math.isfinite(number):
        return None
    if number.is_integer() and abs(number) < 2**53:
        return int(number)
    return number


def finite_number(value: Any) -> float | None:
    number = as_number(value)
    return number if number is not None and math.isfinite(number) else None


def scalar(value: Any) -> tuple[tuple[bool, Any], Any] | None:
    """A JSON scalar's identity and canonical form (`1.0` is `1`; `true` is not `1`)."""
    if isinstance(value, bool):
        return (True, value), value
    if isinstance(value, str):
        return (False, value), value
    if is_number(value):
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            canonical: Any = json_number(value)
        else:
            canonical = value
        return (False, canonical), canonical
    return None


def exact_sum(values: Iterable[float]) -> float:
    try:
        return math.fsum(values)  # correctly rounded, so independent of order
    except OverflowError:
        return math.inf


def add_partial(partials: list[float], number: float) -> None:
    """Shewchuk's running sum: `fsum(partials)` stays the exact sum of all numbers added."""
    i = 0
    for partial in partials:
        big, small = (number, partial) if abs(number) >= abs(partial) else (partial, number)
        high = big + small
        low = small - (high - big)
        if low:
            partials[i] = low
            i += 1
        number = high
    partials[i:] = [number]


def _cells(times: list[int], step: int) -> int:
    count, last = 0, None
    for t in times:
        cell = t // step
        if cell != last:
            count, last = count + 1, cell
    return count


def _groups(times: list[int], step: int) -> list[tuple[int, int]]:
    """Runs `[start, end)` of sorted times that share a grid cell."""
    runs: list[tuple[int, int]] = []
    start, cell = 0, times[0] // step
    for j in range(1, len(times)):
        here = times[j] // step
        if here != cell:
            runs.append((start, j))
            start, cell = j, here
    runs.append((start, len(times)))
    return runs


def _coarsest_needed(series: list[list[int]], resolution: int) -> int:
    """The finest grid step, not finer than `resolution`, that fits the entry budget (or
    leaves one entry per series, if even that is over it)."""
    step = max(resolution, _GRID[0])
    fewest = sum(1 for times in series if times)
    while max(fewest, COALESCED_ENTRIES) < sum(_cells(times, step) for times in series):
        step = next((g for g in _GRID if g > step), step * 2)
    return step


def _delta(times: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *times], times, strict=False)]


def _undelta(deltas: list[int]) -> list[int]:
    return list(accumulate(deltas))


class TraitState(ABC):
    """One person's running state for one computed trait (mutable; see `new_state`)."""

    __slots__ = ()
    tag: ClassVar[str]

    @abstractmethod
    def observe(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> None: ...

    @abstractmethod
    def value(self, spec: ComputedTraitSpec, now: int) -> Any: ...

    def next_change(self, spec: ComputedTraitSpec, now: int) -> int | None:
        return None

    def expire(self, spec: ComputedTraitSpec, now: int) -> None:
        return None

    @abstractmethod
    def merge(self: State, spec: ComputedTraitSpec, other: State) -> State: ...

    @abstractmethod
    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_json(cls: type[State], spec: ComputedTraitSpec, data: dict[str, Any]) -> State: ...


def _window(spec: ComputedTraitSpec) -> int:
    assert spec.window_us is not None
    return spec.window_us


# -- windowed aggregates: count, sum, avg, min, max, first, first_time ---------------------


class WindowEntries(TraitState):
    """Entries sorted by time: each an event, or past the cap a coalesced grid cell holding
    `count` events, stamped with its latest event's time, and a kind-specific payload."""

    __slots__ = ("counts", "horizon", "payloads", "resolution", "times")
    tag = "window"

    def __init__(self) -> None:
        self.times: list[int] = []
        self.counts: list[int] = []
        self.payloads: list[Any] = []
        self.resolution = 0
        self.horizon = FAR_PAST

    def payload(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> Any:
        """What one event contributes, or MISSING when it contributes nothing."""
        return None

    def combine(self, spec: ComputedTraitSpec, payloads: list[Any]) -> Any:
        return None

    def aggregate(self, spec: ComputedTraitSpec, start: int) -> Any:
        return self.events_from(start)

    def events_from(self, start: int) -> int:
        if self.resolution == 0:
            return len(self.times) - start
        return sum(self.counts[start:])

    def observe(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> None:
        if at <= self.horizon:
            return
        payload = self.payload(spec, at, seq, value)
        if payload is MISSING:
            return
        i = bisect_right(self.times, at)
        self.times.insert(i, at)
        self.counts.insert(i, 1)
        self.payloads.insert(i, payload)
        if len(self.times) > MAX_ENTRIES:
            self._coalesce(spec)

    def _coalesce(self, spec: ComputedTraitSpec) -> None:
        step = _coarsest_needed([self.times], self.resolution)
        times, counts, payloads = [], [], []
        for start, end in _groups(self.times, step):
            times.append(self.times[end - 1])
            if end - start == 1:
                counts.append(self.counts[start])
                payloads.append(self.payloads[start])
            else:
                counts.append(sum(self.counts[start:end]))
                payloads.append(self.combine(spec, self.payloads[start:end]))
        self.times, self.counts, self.payloads, self.resolution = times, counts, payloads, step

    def value(self, spec: ComputedTraitSpec, now: int) -> Any:
        return self.aggregate(spec, bisect_right(self.times, now - _window(spec)))

    def next_change(self, spec: ComputedTraitSpec, now: int) -> int | None:
        window = _window(spec)
        i = bisect_right(self.times, now - window)
        return self.times[i] + window if i < len(self.times) else None

    def expire(self, spec: ComputedTraitSpec, now: int) -> None:
        cutoff = now - _window(spec)
        self.horizon = max(self.horizon, cutoff)
        i = bisect_right(self.times, cutoff)
        if i:
            del self.times[:i], self.counts[:i], self.payloads[:i]
            if not self.times:
                self.resolution = 0

    def merge(self, spec: ComputedTraitSpec, other: WindowEntries) -> WindowEntries:
        merged = type(self)()
        merged.horizon = max(self.horizon, other.horizon)
        merged.resolution = max(self.resolution, other.resolution)
        rows = sorted(
            (
                row
                for state in (self, other)
                for row in zip(state.times, state.counts, state.payloads, strict=True)
                if row[0] > merged.horizon
            ),
            key=lambda row: row[0],
        )
        merged.times = [row[0] for row in rows]
        merged.counts = [row[1] for row in rows]
        merged.payloads = [row[2] for row in rows]
        if not rows:
            merged.resolution = 0
        elif len(rows) > MAX_ENTRIES:
            merged._coalesce(spec)
        return merged

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"t": _delta(self.times), "h": self.horizon}
        if self.resolution:
            data["r"] = self.resolution
            data["c"] = self.counts
        if type(self).payload is not WindowEntries.payload:
            data["p"] = self.payloads
        return data

    @classmethod
    def from_json(cls, spec: ComputedTraitSpec, data: dict[str, Any]) -> WindowEntries:
        state = cls()
        state.times = _undelta(data["t"])
        state.horizon = data["h"]
        state.resolution = data.get("r", 0)
        state.counts = data.get("c") or [1] * len(state.times)
        state.payloads = data.get("p") or [None] * len(state.times)
        return state


class WindowCount(WindowEntries):
    __slots__ = ()


class WindowNumbers(WindowEntries):
    """sum and avg: each entry's payload is the sum of its numbers; `counts` counts them."""

    __slots__ = ()

    def payload(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> Any:
        number = finite_number(value)
        return MISSING if number is None else number

    def combine(self, spec: ComputedTraitSpec, payloads: list[Any]) -> Any:
        return exact_sum(payloads)

    def aggregate(self, spec: ComputedTraitSpec, start: int) -> Any:
        total = exact_sum(self.payloads[start:])
        if spec.kind == "sum":
            return json_number(total)
        numbers = self.events_from(start)
        return json_number(total / numbers) if numbers else None


class WindowExtreme(WindowEntries):
    """min and max: each entry's payload is its smallest (largest) number."""

    __slots__ = ()

    def payload(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> Any:
        number = finite_number(value)
        return MISSING if number is None else number

    def combine(self, spec: ComputedTraitSpec, payloads: list[Any]) -> Any:
        return min(payloads) if spec.kind == "min" else max(payloads)

    def aggregate(self, spec: ComputedTraitSpec, start: int) -> Any:
        if start >= len(self.payloads):
            return None
        pick = min if spec.kind == "min" else max
        return json_number(pick(self.payloads[start:]))


class WindowFirst(WindowEntries):
    """first and first_time: each entry's payload is `[at, seq, value]` of its earliest event."""

    __slots__ = ()

    def payload(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> Any:
        if spec.kind == "first_time":
            return [at, seq, None]
        return MISSING if value is MISSING or value is None else [at, seq, value]

    def combine(self, spec: ComputedTraitSpec, payloads: list[Any]) -> Any:
        return min(payloads, key=lambda p: (p[0], p[1]))

    def aggregate(self, spec: ComputedTraitSpec, start: int) -> Any:
        if start >= len(self.times):
            return None
        # A coalesced entry's earliest event lies less than one grid step before its stamp,
        # so only entries stamped within one step of the first can hold an earlier event.
        reach = self.times[start] + self.resolution
        end = bisect_right(self.times, reach, lo=start)
        first = min(self.payloads[start:end], key=lambda p: (p[0], p[1]))
        return iso_utc(first[0]) if spec.kind == "first_time" else first[2]


# -- one remembered event: first/first_time of all time, last/last_time -------------------


class Extreme(TraitState):
    """The earliest (first, first_time) or latest (last, last_time) event as
    `[at, seq, value]`. In a window the latest event is the last to leave it, so keeping it
    alone is exact for last and last_time."""

    __slots__ = ("best", "horizon")
    tag = "extreme"

    def __init__(self) -> None:
        self.best: list[Any] | None = None
        self.horizon = FAR_PAST

    @staticmethod
    def _latest(spec: ComputedTraitSpec) -> bool:
        return spec.kind in ("last", "last_time")

    def _offer(self, spec: ComputedTraitSpec, candidate: list[Any]) -> None:
        best = self.best
        if best is None:
            self.best = candidate
            return
        later = (candidate[0], candidate[1]) > (best[0], best[1])
        if later == self._latest(spec):
            self.best = candidate

    def observe(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> None:
        if at <= self.horizon:
            return
        if spec.kind in ("first_time", "last_time"):
            value = None
        elif value is MISSING or value is None:
            return
        self._offer(spec, [at, seq, value])

    def value(self, spec: ComputedTraitSpec, now: int) -> Any:
        best = self.best
        if best is None or (spec.window_us is not None and best[0] <= now - spec.window_us):
            return None
        return iso_utc(best[0]) if spec.kind.endswith("_time") else best[2]

    def next_change(self, spec: ComputedTraitSpec, now: int) -> int | None:
        if self.best is None or spec.window_us is None:
            return None
        moment: int = self.best[0] + spec.window_us
        return moment if moment > now else None

    def expire(self, spec: ComputedTraitSpec, now: int) -> None:
        if spec.window_us is not None:
            self.horizon = max(self.horizon, now - spec.window_us)
            if self.best is not None and self.best[0] <= self.horizon:
                self.best = None

    def merge(self, spec: ComputedTraitSpec, other: Extreme) -> Extreme:
        merged = Extreme()
        merged.horizon = max(self.horizon, other.horizon)
        for best in (self.best, other.best):
            if best is not None and best[0] > merged.horizon:
                merged._offer(spec, best)
        return merged

    def to_json(self) -> dict[str, Any]:
        return {"b": self.best, "h": self.horizon}

    @classmethod
    def from_json(cls, spec: ComputedTraitSpec, data: dict[str, Any]) -> Extreme:
        state = cls()
        state.best, state.horizon = data["b"], data["h"]
        return state


# -- all-time aggregates in constant space ------------------------------------------------


class Totals(TraitState):
    """count, sum, avg, min and max of all time: a count, an exact running sum (Shewchuk
    partials, so the result is the correctly rounded sum whatever the order), and extremes."""

    __slots__ = ("high", "low", "numbers", "partials")
    tag = "totals"

    def __init__(self) -> None:
        self.numbers = 0  # events for count, numbers for the others
        self.partials: list[float] = []
        self.low: float | None = None
        self.high: float | None = None

    def observe(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> None:
        if spec.kind == "count":
            self.numbers += 1
            return
        number = finite_number(value)
        if number is None:
            return
        self.numbers += 1
        if spec.kind in ("sum", "avg"):
            add_partial(self.partials, number)
        if self.low is None or number < self.low:
            self.low = number
        if self.high is None or number > self.high:
            self.high = number

    def value(self, spec: ComputedTraitSpec, now: int) -> Any:
        kind = spec.kind
        if kind == "count":
            return self.numbers
        if kind == "sum":
            return json_number(exact_sum(self.partials))
        if kind == "avg":
            return json_number(exact_sum(self.partials) / self.numbers) if self.numbers else None
        extreme = self.low if kind == "min" else self.high
        return None if extreme is None else json_number(extreme)

    def merge(self, spec: ComputedTraitSpec, other: Totals) -> Totals:
        merged = Totals()
        merged.numbers = self.numbers + other.numbers
        merged.partials = list(self.partials)
        for partial in other.partials:
            add_partial(merged.partials, partial)
        lows = [x for x in (self.low, other.low) if x is not None]
        highs = [x for x in (self.high, other.high) if x is not None]
        merged.low = min(lows) if lows else None
        merged.high = max(highs) if highs else None
        return merged

    def to_json(self) -> dict[str, Any]:
        return {"n": self.numbers, "s": self.partials, "l": self.low, "g": self.high}

    @classmethod
    def from_json(cls, spec: ComputedTraitSpec, data: dict[str, Any]) -> Totals:
        state = cls()
        state.numbers, state.partials = data["n"], data["s"]
        state.low, state.high = data["l"], data["g"]
        return state


# -- unique_list ---------------------------------------------------------------------------


class RecentValues(TraitState):
    """The `limit` distinct values with the latest last sighting, as `[at, seq, value]`.
    Exact, in a window too: a value beyond them was last seen before all of them, so it
    leaves the window no later than they do."""

    __slots__ = ("horizon", "seen")
    tag = "recent"

    def __init__(self) -> None:
        self.seen: dict[tuple[bool, Any], list[Any]] = {}
        self.horizon = FAR_PAST

    def _offer(self, spec: ComputedTraitSpec, key: tuple[bool, Any], sighting: list[Any]) -> None:
        known = self.seen.get(key)
        if known is not None:
            if (sighting[0], sighting[1]) > (known[0], known[1]):
                self.seen[key] = sighting
            return
        self.seen[key] = sighting
        if len(self.seen) > (spec.limit or 1):
            oldest = min(self.seen, key=lambda k: (self.seen[k][0], self.seen[k][1]))
            del self.seen[oldest]

    def observe(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> None:
        found = scalar(value)
        if found is not None and at > self.horizon:
            self._offer(spec, found[0], [at, seq, found[1]])

    def _live(self, spec: ComputedTraitSpec, now: int) -> list[list[Any]]:
        cutoff = FAR_PAST if spec.window_us is None else now - spec.window_us
        return [s for s in self.seen.values() if s[0] > cutoff]

    def value(self, spec: ComputedTraitSpec, now: int) -> Any:
        live = sorted(self._live(spec, now), key=lambda s: (s[0], s[1]), reverse=True)
        return [s[2] for s in live]

    def next_change(self, spec: ComputedTraitSpec, now: int) -> int | None:
        if spec.window_us is None:
            return None
        live = self._live(spec, now)
        return min(s[0] for s in live) + spec.window_us if live else None

    def expire(self, spec: ComputedTraitSpec, now: int) -> None:
        if spec.window_us is not None:
            self.horizon = max(self.horizon, now - spec.window_us)
            self.seen = {k: s for k, s in self.seen.items() if s[0] > self.horizon}

    def merge(self, spec: ComputedTraitSpec, other: RecentValues) -> RecentValues:
        merged = RecentValues()
        merged.horizon = max(self.horizon, other.horizon)
        for state in (self, other):
            for key, sighting in state.seen.items():
                if sighting[0] > merged.horizon:
                    merged._offer(spec, key, sighting)
        return merged

    def to_json(self) -> dict[str, Any]:
        return {"s": list(self.seen.values()), "h": self.horizon}

    @classmethod
    def from_json(cls, spec: ComputedTraitSpec, data: dict[str, Any]) -> RecentValues:
        state = cls()
        state.horizon = data["h"]
        for sighting in data["s"]:
            found = scalar(sighting[2])
            assert found is not None
            state.seen[found[0]] = sighting
        return state


# -- most_frequent -------------------------------------------------------------------------


class FrequentValues(TraitState):
    """Per distinct value `[count, at, seq, value]` with its latest sighting; the winner has
    the highest count, ties going to the latest sighting. Past `MAX_VALUES` distinct values
    the Space-Saving rule applies: the newcomer takes the least counted value's place and
    count (plus one), so a value seen in more than 1/100 of the events is never lost, and a
    count may be over-stated by at most the smallest tracked count."""

    __slots__ = ("tally",)
    tag = "frequent"

    def __init__(self) -> None:
        self.tally: dict[tuple[bool, Any], list[Any]] = {}

    def _add(self, key: tuple[bool, Any], count: int, at: int, seq: int, value: Any) -> None:
        row = self.tally.get(key)
        if row is None:
            if len(self.tally) >= MAX_VALUES:
                least = min(self.tally, key=lambda k: _rank(self.tally[k]))
                count += self.tally.pop(least)[0]
            self.tally[key] = [count, at, seq, value]
            return
        row[0] += count
        if (at, seq) > (row[1], row[2]):
            row[1], row[2], row[3] = at, seq, value

    def observe(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> None:
        found = scalar(value)
        if found is not None:
            self._add(found[0], 1, at, seq, found[1])

    def value(self, spec: ComputedTraitSpec, now: int) -> Any:
        if not self.tally:
            return None
        return max(self.tally.values(), key=_rank)[3]

    def merge(self, spec: ComputedTraitSpec, other: FrequentValues) -> FrequentValues:
        merged = FrequentValues()
        for state in (self, other):
            for key, (count, at, seq, value) in state.tally.items():
                merged._add(key, count, at, seq, value)
        return merged

    def to_json(self) -> dict[str, Any]:
        return {"v": list(self.tally.values())}

    @classmethod
    def from_json(cls, spec: ComputedTraitSpec, data: dict[str, Any]) -> FrequentValues:
        state = cls()
        for row in data["v"]:
            found = scalar(row[3])
            assert found is not None
            state.tally[found[0]] = row
        return state


def _rank(row: list[Any]) -> tuple[int, int, int]:
    return row[0], row[1], row[2]


class Series:
    """One value's sightings in a window: sorted times, with counts once coalesced."""

    __slots__ = ("at", "counts", "seq", "times", "value")

    def __init__(self, value: Any, at: int, seq: int) -> None:
        self.value, self.at, self.seq = value, at, seq
        self.times: list[int] = []
        self.counts: list[int] = []

    def in_window(self, cutoff: int, exact: bool) -> int:
        start = bisect_right(self.times, cutoff)
        return len(self.times) - start if exact else sum(self.counts[start:])


class WindowFrequentValues(TraitState):
    """most_frequent in a window: per value its sighting times, so counts are exact until
    the entry cap; then coalesced like `WindowEntries`. Past `MAX_VALUES` distinct values a
    newcomer replaces the value with the fewest sightings (ties: the one seen longest ago)."""

    __slots__ = ("horizon", "resolution", "values")
    tag = "window_frequent"

    def __init__(self) -> None:
        self.values: dict[tuple[bool, Any], Series] = {}
        self.resolution = 0
        self.horizon = FAR_PAST

    def _series(self, key: tuple[bool, Any], value: Any, at: int, seq: int) -> Series:
        series = self.values.get(key)
        if series is None:
            if len(self.values) >= MAX_VALUES:
                least = min(self.values, key=lambda k: _weight(self.values[k]))
                del self.values[least]
            series = self.values[key] = Series(value, at, seq)
        elif (at, seq) > (series.at, series.seq):
            series.value, series.at, series.seq = value, at, seq
        return series

    def observe(self, spec: ComputedTraitSpec, at: int, seq: int, value: Any) -> None:
        found = scalar(value)
        if found is None or at <= self.horizon:
            return
        series = self._series(found[0], found[1], at, seq)
        i = bisect_right(series.times, at)
        series.times.insert(i, at)
        series.counts.insert(i, 1)
        if sum(len(s.times) for s in self.values.values()) > MAX_ENTRIES:
            self._coalesce()

    def _coalesce(self) -> None:
        every = list(self.values.values())
        step = _coarsest_needed([s.times for s in every], self.resolution)
        for series in every:
            runs = _groups(series.times, step)
            series.counts = [sum(series.counts[a:b]) for a, b in runs]
            series.times = [series.times[b - 1] for _, b in runs]
        self.resolution = step

    def value(self, spec: ComputedTraitSpec, now: int) -> Any:
        cutoff, exact = now - _window(spec), self.resolution == 0
        best: tuple[int, int, int] | None = None
        winner = None
        for series in self.values.values():
            count = series.in_window(cutoff, exact)
            if count and (best is None or (count, series.at, series.seq) > best):
                best, winner = (count, series.at, series.seq), series.value
        return winner

    def next_change(self, spec: ComputedTraitSpec, now: int) -> int | None:
        window = _window(spec)
        moments = []
        for series in self.values.values():
            i = bisect_right(series.times, now - window)
            if i < len(series.times):
                moments.append(series.times[i] + window)
        return min(moments, default=None)

    def expire(self, spec: ComputedTraitSpec, now: int) -> None:
        self.horizon = max(self.horizon, now - _window(spec))
        for key, series in list(self.values.items()):
            i = bisect_right(series.times, self.horizon)
            if i == len(series.times):
                del self.values[key]
            elif i:
                del series.times[:i], series.counts[:i]
        if not self.values:
            self.resolution = 0

    def merge(self, spec: ComputedTraitSpec, other: WindowFrequentValues) -> WindowFrequentValues:
        merged = WindowFrequentValues()
        merged.horizon = max(self.horizon, other.horizon)
        merged.resolution = max(self.resolution, other.resolution)
        for state in (self, other):
            for key, series in state.values.items():
                rows = [
                    (t, c)
                    for t, c in zip(series.times, series.counts, strict=True)
                    if t > merged.horizon
                ]
                if not rows:
                    continue
                target = merged._series(key, series.value, series.at, series.seq)
                rows += zip(target.times, target.counts, strict=True)
                rows.sort(key=lambda row: row[0])
                target.times = [t for t, _ in rows]
                target.counts = [c for _, c in rows]
        if not merged.values:
            merged.resolution = 0
        elif sum(len(s.times) for s in merged.values.values()) > MAX_ENTRIES:
            merged._coalesce()
        return merged

    def to_json(self) -> dict[str, Any]:
        rows = []
        for s in self.values.values():
            row = [s.value, s.at, s.seq, _delta(s.times)]
            if self.resolution:
                row.append(s.counts)
            rows.append(row)
        return {"v": rows, "r": self.resolution, "h": self.horizon}

    @classmethod
    def from_json(cls, spec: ComputedTraitSpec, data: dict[str, Any]) -> WindowFrequentValues:
        state = cls()
        state.resolution, state.horizon = data["r"], data["h"]
        for row in data["v"]:
            found = scalar(row[0])
            assert found is not None
            series = state.values[found[0]] = Series(row[0], row[1], row[2])
            series.times = _undelta(row[3])
            series.counts = row[4] if len(row) > 4 else [1] * len(series.times)
        return state


def _weight(series: Series) -> tuple[int, int, int]:
    return sum(series.counts), series.at, series.seq


_ALL_TIME: dict[str, type[TraitState]] = {
    **dict.fromkeys(("count", "sum", "avg", "min", "max"), Totals),
    **dict.fromkeys(("first", "first_time", "last", "last_time"), Extreme),
    "unique_list": RecentValues,
    "most_frequent": FrequentValues,
}
_WINDOWED: dict[str, type[TraitState]] = {
    **_ALL_TIME,
    "count": WindowCount,
    **dict.fromkeys(("sum", "avg"), WindowNumbers),
    **dict.fromkeys(("min", "max"), WindowExtreme),
    **dict.fromkeys(("first", "first_time"), WindowFirst),
    "most_frequent": WindowFrequentValues,
}


def state_class(kind: str, *, windowed: bool) -> type[TraitState]:
    return (_WINDOWED if windowed else _ALL_TIME)[kind]
