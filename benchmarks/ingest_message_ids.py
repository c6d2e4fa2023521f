"""Does a batch without messageIds ingest as fast as one with them? Both against one server.

    .venv/bin/python benchmarks/ingest_message_ids.py             # about 1.5 minutes
    .venv/bin/python benchmarks/ingest_message_ids.py --quick     # about 30 s
    .venv/bin/python benchmarks/ingest_message_ids.py --record    # also append to RESULTS.md
    .venv/bin/python benchmarks/ingest_message_ids.py --help

It starts `tessera serve` with `TESSERA_PROCESSOR_MODE=off` (the gateway alone) on a fresh
SQLite file in a temporary directory, on loopback (`harness_server.Server`), and drives POST
/v1/batch with 100-event batches as `curl` users send them (the ingest benchmark's track
calls with properties and context, no `sentAt`, no `timestamp`) on 8 keep-alive
connections, one request in flight each, from a separate process (`ingest_driver`). Two
cases alternate, `--repeats` times each, so both see the same machine and a database of
about the same size:

- `client`: every event carries a unique `messageId` (`--client-ids counter`, `b<n>-<i>`, as
  a load generator numbers them, or `uuid`, random UUIDs as the Segment SDKs send);
- `generated`: no `messageId`, so the server generates one per event.

Requests are assembled from pre-rendered byte templates (only the ids differ), so the
driver needs a small fraction of a core. It prints events/s for each window, the median per
case, and the ratio generated/client; the target is >= 20,000 events/s in both cases on a
quiet 2-core machine. Every acknowledged event must be stored: the events table is counted
at the end. The server is stopped (SIGINT, then SIGKILL) in a `finally`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import machine, make_workdir, record, remove_workdir
from harness_profile import write_summary
from harness_server import Server
from ingest_driver import PhaseSpec, run_phase

TARGET_EVENTS_PER_S = 20_000
BATCH_SIZE = 100
CONNECTIONS = 8
PROFILE_RATE = 200  # py-spy samples per second, idle threads too (the writer on fsync)


def run_window(server: Server, case: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One measured window of `case`; py-spy over each case's first one with --profile."""
    spec = PhaseSpec(
        case,
        "batch",
        host="127.0.0.1",
        port=server.port,
        write_key=server.write_key,
        connections=CONNECTIONS,
        warmup=args.warmup,
        duration=args.duration,
        batch_size=BATCH_SIZE,
        id_prefix=f"b{seed}-",
        server_pid=server.pid,
        message_ids=args.client_ids if case == "client" else "none",
        timestamps=False,
    )
    profile = args.profile if seed == 0 else None
    result = run_phase(spec, profile, PROFILE_RATE, ["--idle"])
    if profile is not None:
        text = write_summary(profile / f"{case}.txt", args.duration, PROFILE_RATE)
        if text is not None:
            print(text)
    return result


def window_line(case: str, result: dict[str, Any]) -> str:
    events_per_s = result["events_ok"] / result["window_s"]
    others = {k: v for k, v in result["total_status"].items() if k != 200}
    error = next(iter(result["error_samples"].values()), "")
    return (
        f"  {case:>9}  {events_per_s:>9,.0f} events/s"
        f"  server {result['server_cores']:.2f} cores,"
        f" {events_per_s / max(result['server_cores'], 0.01):>7,.0f}"
        f" events per server CPU-second; driver {result['driver_cores']:.2f} cores"
        + (f"  non-200: {others} {error!r}" if others else "")
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--repeats", type=int, default=4, help="windows per case (default 4)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per window")
    parser.add_argument(
        "--client-ids",
        choices=("counter", "uuid"),
        default="counter",
        help="messageIds of the `client` case: b<seed>-<n> (default) or random UUIDs",
    )
    parser.add_argument(
        "--max-events-per-s",
        type=int,
        default=60_000,
        help="no longer used (requests are assembled as they are sent); accepted so that "
        "existing command lines still run",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the server in each case's first window: DIR/<case>.txt, collapsed stacks",
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats of 1 s + 4 s windows")
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.duration = 2, 1.0, 4.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = make_workdir("message-ids")
    server = Server(workdir, {"TESSERA_PROCESSOR_MODE": "off"})
    rates: dict[str, list[float]] = {"client": [], "generated": []}
    lines: list[str] = []
    acked = 0
    try:
        server.start()
        print(
            f"tessera serve (processor off) on 127.0.0.1:{server.port}, {server.database}; "
            f"{BATCH_SIZE}-event batches on {CONNECTIONS} connections, no sentAt; "
            f"client ids: {args.client_ids}"
        )
        for repeat in range(args.repeats):
            # Alternate which case goes first, so neither always meets the bigger database.
            order = ("client", "generated") if repeat % 2 == 0 else ("generated", "client")
            for case in order:
                result = run_window(server, case, args, seed=repeat)
                acked += result["total_events_ok"]
                rates[case].append(result["events_ok"] / result["window_s"])
                lines.append(window_line(case, result))
                print(lines[-1], flush=True)
        stored = server.count_events()
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
        remove_workdir(workdir, keep=False)
    client = statistics.median(rates["client"])
    generated = statistics.median(rates["generated"])
    summary = [
        f"median  client ids ({args.client_ids}): {client:>9,.0f} events/s",
        f"median  generated ids:        {generated:>9,.0f} events/s",
        f"ratio   generated / client:   {generated / client:.2f}",
        f"target  >= {TARGET_EVENTS_PER_S:,} events/s in both cases: "
        + ("met" if min(client, generated) >= TARGET_EVENTS_PER_S else "not met"),
        f"stored {stored:,} events, acknowledged {acked:,}",
    ]
    print("\n".join(summary))
    if args.record:
        record(
            f"ingest messageIds {info['date']}",
            [*lines, *summary],
            info=info,
            bullets=[f"- load average before the run: {info['load']}"],
            run=f"{args.repeats} windows per case, {args.warmup:g} s warm-up + "
            f"{args.duration:g} s each, interleaved; client ids {args.client_ids}; "
            f"{BATCH_SIZE}-event batches on {CONNECTIONS} connections, no sentAt, "
            "processor off" + (", profiled with py-spy" if args.profile else ""),
        )
    return 0 if stored == acked else 1


if __name__ == "__main__":
    sys.exit(main())
