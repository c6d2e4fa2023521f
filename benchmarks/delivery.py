"""Delivery benchmark: how many messages a second does the delivery worker send to a webhook,
batched and one per call, against what the receiver itself can take; and how long does a
tracked event take to reach a webhook through a real `tessera serve`?

Run it with the project's virtualenv (nothing else needed; no network beyond loopback):

    .venv/bin/python benchmarks/delivery.py            # full run: ~3 minutes
    .venv/bin/python benchmarks/delivery.py --quick    # small sizes, short windows: ~1 minute
    .venv/bin/python benchmarks/delivery.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/delivery.py --profile /tmp/prof   # py-spy the measured processes
    .venv/bin/python benchmarks/delivery.py --help     # every knob (sizes, rates, durations)

It uses the harness modules (`harness*.py`): the store settings a default `tessera serve` uses
(synchronous=FULL), the synthetic profiles of identity.py's lookup store, the server wrapper,
the receiver, the machine description and the py-spy summary; its parts are in
`delivery_store.py`, `delivery_throughput.py` and `delivery_latency.py`. TESSERA_* variables
in the environment reach every part and are printed (and recorded).

The receiver is the same in every part: a raw ASGI app under uvicorn (httptools, uvloop) in
its own spawned process, so it shares no interpreter lock with what sends to it. It parses
every body (`{"batch": [...]}` or one message), keeps each messageId in arrival order and,
for events carrying `properties.sent_at`, the arrival time (time.time()); it answers 200 `{}`.

What one run does:

1. + 2. Throughput, batched (`--batched-messages`, default 50,000; webhook batch_size 500,
   concurrency 4) and unbatched (`--unbatched-messages`, default 10,000; batch_size 1, one
   run per `--unbatched-concurrency`, default 8 and 16). Each run on a fresh store: migrated,
   `--people` synthetic profiles (a `profiles` row, user_id/email/anonymous_id identities and
   six traits each, as identity.py part 3 builds them), a webhook destination created with
   `tessera.activation.service.create_destination` (subscribed to track events), and the
   outbox filled directly: realistic Segment track calls (ingest.py's templates, the person's
   userId and anonymousId), normalised as the event log stores them (`normalise_message`),
   queued with the processor's own `Fanout` (`event` + `flush`: the same executemany), the
   people interleaved (message i is person i mod P's), so per-person order is exercised.
   First the reference, measured in the same run against the same receiver: closed-loop
   clients in this process, as many as the webhook's concurrency, posting the same Tessera
   messages pre-serialised (500-message bodies batched, one message a request unbatched)
   for `--reference-seconds` after a short warm-up; once with the `httpx.AsyncClient` the
   webhook plugin builds (`tessera.activation.http.client`), once with a minimal HTTP/1.1
   keep-alive client on asyncio streams (identity.py's), which shows the receiver's own
   ceiling. Then a spawned process starts `Deliverer(engine, settings)` on the store and the
   parent polls `SELECT count(*) ... state = 'delivered'` every 20 ms until every row is
   delivered (or `--timeout`): messages/s from the start to the last row, the steady rate
   between 10% and 90% delivered, the delivery cycles it took, and the CPU used. Checks: the
   receiver got every messageId exactly as many times as sent (missing, unknown, duplicates
   counted), each person's messages arrived in order, and the outbox has no pending, dead or
   retried row. Printed as well: Tessera / reference for both clients.
3. Latency from tracked event to webhook received. `tessera serve` (the default
   processor_mode "process": the processor and the delivery worker in a child
   `tessera worker`) on a fresh store, a source and an admin token from the CLI
   (`tessera source create bench`, `tessera token create bench --role admin`), and a webhook
   destination through `POST /api/v1/destinations` subscribed to track events with the
   plugin's default batch_size and concurrency (1 and 4; `--latency-batch-size` and
   `--latency-concurrency` change them). An open-loop sender posts `/v1/batch` requests of
   `--latency-batch` track events at `--latency-rate` events/s for `--latency-warmup` +
   `--latency-duration` seconds, each event carrying `properties.sent_at` = time.time() when
   its request was built; the receiver records arrival - sent_at. Only events sent after the
   warm-up count; one that never arrives within `--latency-drain` seconds of the last send
   counts as infinitely late. Printed: p50/p95/p99/max, how many arrived, and where the time
   went: sent -> queued (the outbox row's created_at: ingest, group commit, processor) and
   queued -> received (the delivery worker), from the store after the run.
4. A summary against the targets: >= 5,000 messages/s batched; >= 1,000 messages/s unbatched;
   event-to-webhook p95 <= 2 s; with the CPU used by the measured processes and by anything
   else on the machine (other work on a 2-core machine makes the figures noisy). The exit
   status is 1 when a check fails (messages lost, duplicated or out of order, rows not
   delivered); targets never fail it.

`--profile DIR` runs `py-spy record --format raw --threads` on the delivering process of each
throughput run and on the `tessera worker` during the latency window, writes DIR/<run>.txt
(batched-4, unbatched-8, ..., latency) and DIR/<run>.summary.txt, and prints the hottest
functions. Sampling perturbs the figures; take the headline numbers from a run without.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections.abc import Sequence
from typing import Any

from delivery_latency import part_latency
from delivery_throughput import part_throughput
from harness import (
    add_output_flags,
    announce,
    comma_list,
    comma_numbers,
    machine,
    make_workdir,
    mark,
    ms,
    record,
    remove_workdir,
)
from harness_receiver import Receiver
from harness_store import (
    region_of,
)
from harness_store import (
    settings as default_settings,
)

PARTS = ("batched", "unbatched", "latency")
TARGET_BATCHED_PER_S = 5_000
TARGET_UNBATCHED_PER_S = 1_000
TARGET_LATENCY_P95_S = 2.0


# --------------------------------------------------------------------------------------------
# Summary and RESULTS.md
# --------------------------------------------------------------------------------------------


def _cpu(result: dict[str, Any], measured: str) -> str:
    return (
        f"CPU (cores busy): {measured} {result['measured_cores']:.2f}, receiver "
        f"{result['receiver_cores']:.2f}, this driver {result['driver_cores']:.2f}, "
        f"other processes {result['other_cores']:.2f}"
    )


def summary_lines(results: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(figures, targets, failed checks)."""
    lines: list[str] = []
    targets = ["targets:"]
    failed: list[str] = []
    for name, r in results.items():
        if name == "latency":
            continue
        target = TARGET_BATCHED_PER_S if r["batch_size"] > 1 else TARGET_UNBATCHED_PER_S
        ref, raw, arr = r["reference"], r["raw"], r["arrivals"]
        ratio = r["messages_per_s"] / ref["messages_per_s"] if ref["messages_per_s"] else 0.0
        raw_ratio = r["messages_per_s"] / raw["messages_per_s"] if raw["messages_per_s"] else 0.0
        states = ", ".join(f"{k} {v:,}" for k, v in sorted(r["states"].items()))
        lines += [
            f"{name}: webhook batch_size {r['batch_size']}, concurrency {r['concurrency']}; "
            f"{r['messages']:,} outbox rows for {r['people']:,} people (~{r['message_bytes']:,} "
            f"B a message as sent; store built in {r['build_s']:.1f} s)",
            f"  Tessera: {r['messages_per_s']:,.0f} messages/s ({r['delivered']:,} delivered in "
            f"{r['elapsed']:.2f} s from the worker's start; first after {ms(r['first_s'])}; "
            f"10%-90% {r['steady_per_s']:,.0f} messages/s; {r['cycles']:,} cycles, "
            f"{r['messages'] / max(1, r['cycles']):,.0f} messages a cycle)",
            f"    {_cpu(r, 'delivery worker')}",
            f"  reference, the same receiver without Tessera: {r['concurrency']} concurrent "
            f"closed-loop clients in one process posting the same bodies pre-serialised "
            f"({ref['duration']:g} s "
            "measured each)",
            *(
                f"    {label}: {x['messages_per_s']:,.0f} messages/s ({x['requests_per_s']:,.0f} "
                f"requests/s; statuses {x['statuses']}; the receiver counted "
                f"{x['received']:,} messages with the warm-up); CPU (cores busy): client "
                f"{x['driver_cores']:.2f}, receiver {x['receiver_cores']:.2f}, other processes "
                f"{x['other_cores']:.2f}"
                for label, x in (
                    ("httpx.AsyncClient (the webhook plugin's client)", ref),
                    ("raw HTTP/1.1 on asyncio streams", raw),
                )
            ),
            f"  Tessera / httpx reference: {ratio:.2f}; Tessera / raw client: {raw_ratio:.2f}",
            f"  receiver: {arr['received']:,} received, {arr['unique']:,} distinct messageIds; "
            f"missing {arr['missing']}, unknown {arr['unknown']}, duplicates "
            f"{arr['duplicates']}, out of order per person {arr['out_of_order']}; outbox: "
            f"{states}",
        ]
        rate = r["messages_per_s"]
        targets.append(
            f"  {name} >= {target:,} messages/s (batch_size {r['batch_size']}, concurrency "
            f"{r['concurrency']}): {rate:,.0f}  {mark(rate >= target)}"
        )
        if not r["complete"]:
            failed.append(f"{name}: {r['delivered']:,} of {r['messages']:,} delivered in time")
        if arr["missing"] or arr["unknown"] or arr["out_of_order"]:
            failed.append(
                f"{name}: {arr['missing']} missing, {arr['unknown']} unknown, "
                f"{arr['out_of_order']} out of order"
            )
        if r["states"].get("dead") or r["states"].get("blocked") or r["cycle_failures"]:
            failed.append(f"{name}: outbox {r['states']}, {r['cycle_failures']} failed cycles")
    r = results.get("latency")
    if r is not None:
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
        lines += [
            f"latency: tracked event -> webhook received, `tessera serve` (processor_mode "
            f"process), webhook batch_size {r['batch_size']}, concurrency {r['concurrency']}; "
            f"{r['rate']:,.0f} events/s offered through /v1/batch ({r['per_request']} a request, "
            f"open loop), {r['warmup']:g} s warm-up + {r['duration']:g} s measured",
            f"  p50 {ms(r['p50'])}  p95 {ms(r['p95'])}  p99 {ms(r['p99'])}  "
            f"max {ms(r['max'])}  ({r['arrived']:,} of {r['measured']:,} measured events "
            f"arrived; all {r['arrived_total']:,} of {r['sent_total']:,} sent, "
            f"{r['duplicates']} duplicates; last one {r['drain_s']:.1f} s after the last send)",
            f"  where the time went: sent -> queued in the outbox (ingest, commit, processor) "
            f"p50 {ms(r['queue_p50'])}, p95 {ms(r['queue_p95'])}; queued -> received "
            f"(delivery) p50 {ms(r['deliver_p50'])}, p95 {ms(r['deliver_p95'])}",
            f"  /v1/batch acknowledged: p50 {ms(r['ack_p50'])}, p99 {ms(r['ack_p99'])}; "
            f"statuses {statuses}",
            f"  CPU (cores busy): server {r['server_cores']:.2f}, worker (processor + delivery) "
            f"{r['measured_cores']:.2f}, receiver {r['receiver_cores']:.2f}, this driver "
            f"{r['driver_cores']:.2f}, other processes {r['other_cores']:.2f}",
        ]
        for error in r["errors"]:
            lines.append(f"  sample error: {error}")
        targets.append(
            f"  event -> webhook p95 <= {TARGET_LATENCY_P95_S:g} s (at {r['events_per_s']:,.0f} "
            f"events/s): {ms(r['p95'])}  {mark(r['p95'] <= TARGET_LATENCY_P95_S)}"
        )
        if r["arrived_total"] < r["sent_total"]:
            failed.append(f"latency: {r['sent_total'] - r['arrived_total']:,} events never arrived")
        if set(r["statuses"]) - {200}:
            failed.append(f"latency: /v1/batch answered {r['statuses']}")
    return lines, targets, failed


RESULTS_SECTION_NOTE = """\
One run of `.venv/bin/python benchmarks/delivery.py --record` (see its docstring for what is
measured and how). Targets: >= 5,000 messages/s to a webhook batched, >= 1,000 messages/s one
message a call; event-to-webhook p95 <= 2 s through `tessera serve`. "reference" is a plain
httpx client loop against the same receiver in the same run; "other processes" is CPU used by
anything else on the machine."""


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark delivery to webhooks (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows")
    parser.add_argument(
        "--parts",
        type=comma_list,
        default=list(PARTS),
        help="comma-separated subset of batched,unbatched,latency",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the synthetic profiles")
    size = parser.add_argument_group("throughput (parts 1-2)")
    size.add_argument("--batched-messages", type=int, default=50_000)
    size.add_argument("--batch-size", type=int, default=500, help="webhook batch_size, batched")
    size.add_argument(
        "--batched-concurrency",
        type=comma_numbers,
        default=[4],
        help="comma-separated webhook concurrencies, one batched run each",
    )
    size.add_argument("--unbatched-messages", type=int, default=10_000)
    size.add_argument(
        "--unbatched-concurrency",
        type=comma_numbers,
        default=[8, 16],
        help="comma-separated webhook concurrencies, one unbatched run each",
    )
    size.add_argument("--people", type=int, default=10_000, help="profiles the messages are about")
    size.add_argument(
        "--timeout", type=float, default=180.0, help="give up on a throughput run after (s)"
    )
    size.add_argument(
        "--reference-seconds", type=float, default=3.0, help="measured seconds per reference"
    )
    size.add_argument("--reference-warmup", type=float, default=0.5, help="seconds not counted")
    load = parser.add_argument_group("event-to-webhook latency (part 3)")
    load.add_argument("--latency-rate", type=float, default=500.0, help="events/s offered")
    load.add_argument("--latency-batch", type=int, default=50, help="events per /v1/batch")
    load.add_argument("--latency-people", type=int, default=2_000, help="distinct userIds")
    load.add_argument("--latency-warmup", type=float, default=5.0, help="seconds not measured")
    load.add_argument("--latency-duration", type=float, default=20.0, help="measured seconds")
    load.add_argument(
        "--latency-drain", type=float, default=60.0, help="wait for late events at most (s)"
    )
    load.add_argument(
        "--latency-batch-size", type=int, default=None, help="webhook batch_size (plugin's: 1)"
    )
    load.add_argument(
        "--latency-concurrency", type=int, default=None, help="webhook concurrency (plugin's: 4)"
    )
    add_output_flags(parser)
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts}")
    concurrencies = [*args.batched_concurrency, *args.unbatched_concurrency]
    if not all(1 <= c <= 64 for c in concurrencies):
        parser.error("a webhook's concurrency is 1 to 64")
    if args.quick:
        args.batched_messages = min(args.batched_messages, 10_000)
        args.unbatched_messages = min(args.unbatched_messages, 3_000)
        args.people = min(args.people, 2_000)
        args.reference_seconds = min(args.reference_seconds, 1.5)
        args.latency_rate = min(args.latency_rate, 200.0)
        args.latency_warmup = min(args.latency_warmup, 2.0)
        args.latency_duration = min(args.latency_duration, 6.0)
        args.latency_drain = min(args.latency_drain, 30.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    announce("delivery", info)
    settings = default_settings()
    region = region_of(settings)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = make_workdir("delivery")
    results: dict[str, Any] = {}
    receiver: Receiver | None = None
    try:
        receiver = Receiver()
        print(f"receiver: pid {receiver.pid}, {receiver.url}")
        for part, concurrencies in (
            ("batched", args.batched_concurrency),
            ("unbatched", args.unbatched_concurrency),
        ):
            if part not in args.parts:
                continue
            for concurrency in concurrencies:
                results[f"{part}-{concurrency}"] = part_throughput(
                    part,
                    concurrency,
                    args,
                    workdir,
                    settings=settings,
                    region=region,
                    receiver=receiver,
                )
        if "latency" in args.parts:
            results["latency"] = part_latency(args, workdir, receiver)
    finally:
        if receiver is not None:
            receiver.stop()
        remove_workdir(workdir, keep=args.keep)
    lines, targets, failed = summary_lines(results)
    lines += targets
    if failed:
        lines += ["checks failed:", *(f"  {line}" for line in failed)]
    print()
    print("\n".join(lines))
    for result in results.values():
        text = result.get("profile_summary")
        if text:
            print()
            print(text)
    if args.record:
        record(
            f"delivery {info['date']}",
            lines,
            info=info,
            note=RESULTS_SECTION_NOTE,
            bullets=[f"- load average before the run: {info['load']}"],
            run=f"parts {','.join(args.parts)}; batched {args.batched_messages:,} messages "
            f"(batch_size {args.batch_size}, concurrency "
            f"{','.join(map(str, args.batched_concurrency))}), unbatched "
            f"{args.unbatched_messages:,} (concurrency "
            f"{','.join(map(str, args.unbatched_concurrency))}), "
            f"{args.people:,} people; latency {args.latency_rate:,.0f} events/s, "
            f"{args.latency_warmup:g} s + {args.latency_duration:g} s"
            + (", profiled with py-spy" if args.profile else ""),
        )
    return 1 if failed else 0


if __name__ == "__main__":
    multiprocessing.freeze_support()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the receiver, workers and servers were stopped", file=sys.stderr)
        sys.exit(130)
