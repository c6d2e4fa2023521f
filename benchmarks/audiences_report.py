"""The audience benchmark's summary: figures, targets and failed checks, as printed and
recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from audiences_definitions import NAMED_TRAITS, NOW, TARGET
from harness import (
    mark,
    ms,
    us,
)

if TYPE_CHECKING:
    pass


TARGET_EVAL_PER_EVENT_MS = 1.0
TARGET_EVENTS_PER_S = 10_000
TARGET_RECOMPUTE_S = 10.0


def summary_lines(results: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(figures, targets, failed checks)."""
    lines: list[str] = []
    targets = ["targets:"]
    failed: list[str] = []
    processing = results.get("processing")
    if processing is not None:
        p, ref, on, rb = (
            processing,
            processing["reference"],
            processing["audiences"],
            processing["rebuilt"],
        )
        rate_ref = ref["applied"] / ref["elapsed"]
        rate_on = on["applied"] / on["elapsed"]
        lines += [
            f"processing: demo dataset of {p['people']:,} people, {p['messages']:,} events "
            f"(with consent on identify calls), appended to the log directly; "
            f"{len(NAMED_TRAITS)} computed traits + {p['audience_count']} audiences "
            f"({rb['traits']} computed traits with the implicit ones), clock fixed at "
            f"{NOW:%Y-%m-%d %H:%M} UTC",
        ]
        for label, r in (("no definitions (reference)", ref), ("50 audiences", on)):
            rate = r["applied"] / r["elapsed"]
            lines.append(
                f"  {label}: {rate:,.0f} events/s ({r['applied']:,} events in "
                f"{r['elapsed']:.1f} s, {r['batches']} batches of {r['batch_size']}: p50 "
                f"{ms(r['batch_p50'])}, p99 {ms(r['batch_p99'])}; run_maintenance "
                f"{r['maintenance_s']:.1f} s of it); CPU: {r['cores']:.2f} cores, other "
                f"processes {r['other_cores']:.2f}; peak RSS {r['rss_mib']:,.0f} MiB"
            )
        sep = p["separate"]
        rate_sep = sep["applied"] / sep["elapsed"]
        sm, sd = sep["main"], sep["derived"]
        lines += [
            f"  50 audiences, stages separate (TESSERA_PROCESSOR_DERIVED=separate; a process "
            f"each, as `tessera worker --stage main` and `--stage derived`): {rate_sep:,.0f} "
            f"events/s ({sep['applied']:,} events in {sep['elapsed']:.1f} s: main done after "
            f"{sm['elapsed']:.1f} s at {sm['cores']:.2f} cores, derived level after "
            f"{sd['elapsed']:.1f} s at {sd['cores']:.2f} cores; peak RSS "
            f"{sm['rss_mib']:,.0f} + {sd['rss_mib']:,.0f} MiB); same memberships and values "
            f"as inline: "
            + (
                "yes"
                if p["separate_differences"] == 0
                else f"NO, {p['separate_differences']:,} differences"
            ),
            f"  with audiences / without: {rate_on / rate_ref:.2f} inline, "
            f"{rate_sep / rate_ref:.2f} stages separate",
            f"  derived stage (Pipeline._derive: observe + settle + load + evaluate), per batch "
            f"divided by its events: p50 {us(on['derive_per_event_p50'])}, p95 "
            f"{us(on['derive_per_event_p95'])}, max {us(on['derive_per_event_max'])} a event "
            f"(mean {us(on['derive_per_event_mean'])}; {on['derive_s']:.1f} s in all, "
            f"{on['derive_s'] / on['elapsed']:.0%} of the drain); its write "
            f"(DerivedState.flush) another {on['flush_s']:.1f} s "
            f"({us(on['flush_s'] / on['applied'])} a event)",
            f"  DerivedState.evaluate, one call per touched profile ({on['evaluations']:,} calls, "
            f"{on['affected_mean']:.1f} affected audiences a call on average): p50 "
            f"{us(on['evaluate_p50'])}, p95 {us(on['evaluate_p95'])}, p99 "
            f"{us(on['evaluate_p99'])}, max {ms(on['evaluate_max'])}; "
            f"{on['evaluate_s']:.1f} s in all",
            f"  the same definitions on the reference store after its drain (run_maintenance): "
            f"backfill of {rb['traits']} computed traits over {rb['events']:,} events in "
            f"{rb['backfill_s']:.1f} s ({rb['events'] / rb['backfill_s']:,.0f} events/s, "
            f"{rb['backfill_steps']} steps), build of {p['audience_count']} audiences over "
            f"{rb['profiles']:,} profiles in {rb['build_s']:.1f} s ({rb['build_steps']} steps, "
            f"p50 {ms(rb['build_step_p50'])}, max {ms(rb['build_step_max'])}); CPU "
            f"{rb['cores']:.2f} cores, other processes {rb['other_cores']:.2f}",
            f"  memberships: {p['members_total']:,} in all; largest "
            + ", ".join(f"{name!r} {size:,}" for size, name in p["sizes"][:3])
            + f"; empty: {sum(1 for size, _ in p['sizes'] if size == 0)}",
        ]
        diffs = p["membership_differences"]
        same = not diffs and p["value_differences"] == 0
        lines.append(
            "  incremental (B) = backfill + build (A): "
            + (
                f"identical ({p['audience_count']} audiences, {p['values']:,} computed values)"
                if same
                else f"{len(diffs)} audiences differ, {p['value_differences']:,} computed "
                f"values differ"
            )
        )
        for name, (only_b, only_a) in sorted(diffs.items())[:10]:
            lines.append(f"    {name!r}: {only_b} only incremental, {only_a} only rebuilt")
        if not same:
            failed.append("processing: incremental memberships differ from backfill + build")
        if p["separate_differences"]:
            failed.append("processing: separate stages differ from inline")
        if ref["applied"] != ref["waiting"] or on["applied"] != on["waiting"]:
            failed.append(
                f"processing: {ref['waiting']:,} / {on['waiting']:,} waiting, "
                f"{ref['applied']:,} / {on['applied']:,} applied"
            )
        targets += [
            f"  evaluation cost per event p95 <= {TARGET_EVAL_PER_EVENT_MS:g} ms with "
            f"{p['audience_count']} audiences (Pipeline._derive / batch events): "
            f"{on['derive_per_event_p95'] * 1000:.3f} ms  "
            f"{mark(on['derive_per_event_p95'] * 1000 <= TARGET_EVAL_PER_EVENT_MS)}",
            f"  processing with {p['audience_count']} audiences >= {TARGET_EVENTS_PER_S:,} "
            f"events/s: {max(rate_on, rate_sep):,.0f} (stages "
            f"{'separate' if rate_sep > rate_on else 'inline'}; inline {rate_on:,.0f}, "
            f"separate {rate_sep:,.0f}, without audiences: {rate_ref:,.0f})  "
            f"{mark(max(rate_on, rate_sep) >= TARGET_EVENTS_PER_S)}",
        ]
    recompute = results.get("recompute")
    if recompute is not None:
        r, b, ts = recompute, recompute["build"], recompute["tessera"]
        first, second = ts["first"], ts["second"]
        counts = b["counts"]
        lines += [
            f"recompute store: {b['people']:,} profiles, {b['events']:,} events "
            f"({b['events'] / max(1, b['people']):.1f} a profile), {counts['profile_traits']:,} "
            f"traits, {counts['profile_consent']:,} consent rows; built directly in "
            f"{b['build_s']:.0f} s ({b['slices']} slices; inserting {b['insert_s']:.0f} s of "
            f"it), {b['bytes'] / 2**30:.1f} GiB on disk; payloads equal normalise_message's on "
            f"{b['sampled'] - b['mismatches']:,} of {b['sampled']:,} sampled events",
            f"  TARGET: {orjson.dumps(TARGET).decode()}",
            f"  backfill of its {ts['traits']} implicit computed traits (one pass, "
            f"backfill_step): {b['events']:,} events in {first['backfill_s']:.1f} s, "
            f"{b['events'] / first['backfill_s']:,.0f} events/s ({first['backfill_steps']} "
            f"steps; {ts['values']:,} values written)",
            f"  full recompute (build_step loop): {ts['profiles']:,} profiles in "
            f"{first['build_s']:.2f} s, {ts['profiles'] / first['build_s']:,.0f} profiles/s "
            f"({first['build_steps']} steps, p50 {ms(first['build_step_p50'])}, max "
            f"{ms(first['build_step_max'])}); {r['members']:,} members",
            f"  after update_audience (count >= 2 -> >= 3, same implicit traits; the update "
            f"itself {ms(ts['update_s'])}): {second['build_s']:.2f} s, "
            f"{ts['profiles'] / second['build_s']:,.0f} profiles/s ({second['build_steps']} "
            f"steps); {r['members_changed']:,} members",
            f"  CPU: {first['cores']:.2f} cores, other processes {first['other_cores']:.2f} "
            f"(backfill + build); peak RSS: recompute process {ts['rss_mib']:,.0f} MiB; while "
            f"building, inserting process {b['rss_mib']:,.0f} MiB and each of "
            f"{b['workers']} generating processes up to {b['generator_rss_mib']:,.0f} MiB",
        ]
        e, d, dc = r["export"], r["duckdb"], r["duckdb_changed"]
        lines += [
            f"duckdb reference: {e['rows']:,} events + attribution exported to Parquet in "
            f"{e['export_s']:.0f} s ({e['bytes'] / 2**20:,.0f} MiB, zstd); the hand-written "
            f"query over the raw events (2 threads)",
        ]
        for label, dd, ours, seconds in (
            ("TARGET", d, r["members"], first["build_s"]),
            ("changed", dc, r["members_changed"], second["build_s"]),
        ):
            same = dd["only_tessera"] == 0 and dd["only_duckdb"] == 0
            lines.append(
                f"  {label}: identical member set: "
                + (
                    f"yes ({ours:,})"
                    if same
                    else f"NO (Tessera {ours:,}, DuckDB {dd['members']:,}: "
                    f"{dd['only_tessera']:,} only in Tessera, {dd['only_duckdb']:,} only in "
                    f"DuckDB, e.g. {dd['sample']})"
                )
                + f"; Tessera recompute {seconds:.2f} s vs DuckDB {dd['first_s']:.2f} s (best "
                f"of 3: {dd['best_s']:.2f} s): Tessera / DuckDB = {seconds / dd['first_s']:.1f}"
            )
            if not same:
                failed.append(f"recompute: {label} members differ from DuckDB's")
        lines.append(
            "  (Tessera's recompute reads the precomputed rollups, the computed-trait values "
            "the processor keeps, and writes members, history, changes and schedule; DuckDB "
            "scans the raw events and returns ids. The rollups cost the backfill above, once, "
            "and the processor's upkeep with every event.)"
        )
        if b["mismatches"]:
            failed.append(f"recompute: {b['mismatches']} bulk rows differ from normalise_message")
        if b["head"] != b["events"] or b["counts"]["event_profiles"] != b["events"]:
            failed.append("recompute: the bulk store's events are not dense or not attributed")
        targets.append(
            f"  recompute one audience over {ts['profiles']:,} profiles <= "
            f"{TARGET_RECOMPUTE_S:g} s: {first['build_s']:.2f} s  "
            f"{mark(first['build_s'] <= TARGET_RECOMPUTE_S)}"
        )
    phases = [
        (name, seconds)
        for part in ("processing", "recompute")
        for name, seconds in results.get(part, {}).get("phases", {}).items()
    ]
    if phases:
        lines.append(
            "phases: "
            + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases)
            + f"; whole run {results['elapsed_s'] / 60:.1f} min"
        )
    return lines, targets, failed
