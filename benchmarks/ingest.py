"""Ingest benchmark: how fast does `tessera serve` accept Segment events on SQLite?

Run it with the project's virtualenv (nothing else needed; no network beyond loopback):

    .venv/bin/python benchmarks/ingest.py            # full run, about 1.5 minutes
    .venv/bin/python benchmarks/ingest.py --quick    # short smoke run, about 25 s
    .venv/bin/python benchmarks/ingest.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/ingest.py --profile /tmp/prof   # py-spy the server as well
    .venv/bin/python benchmarks/ingest.py --help     # every knob

The driver is `ingest_driver.py`, the ceiling `ingest_ceiling.py`; the server wrapper, the
machine, CPU, py-spy and RESULTS.md are the harness modules (`harness*.py`).

What one run does:

1. Creates a source with `tessera source create bench` on a fresh SQLite file in a temporary
   directory (TESSERA_DATABASE_URL=sqlite:////tmp/.../tessera.db, TESSERA_LOG_LEVEL=warning;
   the write key is the last line of its output), starts `tessera serve --port P` as a
   subprocess and waits for GET /healthz. Other TESSERA_* variables in the environment reach
   the server and are printed (and recorded), e.g. TESSERA_SQLITE_SYNCHRONOUS=NORMAL to
   compare; by default every acknowledged event has been fsynced (synchronous=FULL).
2. Drives it from a separate process (multiprocessing, spawn) over loopback with a minimal
   asyncio HTTP/1.1 keep-alive client (uvloop when installed): one request in flight per
   connection, requests assembled from pre-rendered byte templates, responses parsed from the
   status line and Content-Length only, so the driver needs about a tenth of a core at
   2,000 requests/s and is not the bottleneck on a 2-core machine. Every message has a unique
   messageId (the server dedupes by messageId). Each phase runs `--warmup` seconds, then is
   measured for `--duration` seconds; only replies that arrive in that window count.
   a. batch: POST /v1/batch with 100 realistic track events per request (~550 bytes each,
      with context and properties) on 8 connections; prints events/s.
   b. single: POST /v1/track, one event per request, closed loop on 32 connections (each
      sends again as soon as it has its reply): the capacity in requests/s, with p50/p90/p99
      latency. In a closed loop mean latency = connections / throughput (Little's law), so at
      2,000 requests/s 32 connections wait 16 ms on average whatever the server does.
   c. paced: the same requests open loop, started at a fixed `--single-rate` (default 2,000/s,
      the target) on up to 64 connections whatever the replies, with latency measured from
      each request's scheduled start, so queueing behind a stalled server counts. This is the
      honest check of "2,000 calls/s with p99 <= 25 ms".
   Non-200 replies are counted per status (429 separately) and a sample body is printed.
   After each phase the driver stops sending and waits for the requests in flight, then the
   events table is counted: stored rows must equal the events acknowledged with 200.
3. The bare ceiling, in the same run, after the server has stopped: the very rows the server
   stored in phase (a) (same column values, same JSON payload text, read back from its
   database) are inserted into a fresh database created by `tessera migrate`, with the same
   pragmas (WAL, synchronous=FULL, foreign_keys=ON) and the server's statement
   (INSERT ... ON CONFLICT (source_id, message_id) DO NOTHING), by sqlite3 executemany in
   100-row transactions; server/ceiling is the ratio of the two rates. Two reference figures
   follow: the same rows through tessera's own `append_events` (driver executemany, 100-row
   transactions, what the writer thread runs), and raw sqlite3 in 1000-row transactions.
4. Prints a summary against the targets (>= 20,000 events/s through /v1/batch; >= 2,000
   single calls/s with p99 <= 25 ms) with the CPU used in each window by the server (and its
   event-loop thread), the driver and every other process: other work on a small machine
   (a test suite, say) makes the figures noisy, and that line shows how much there was.
   The exit status is 1 if stored and acknowledged counts differ; targets never fail it.

The server is stopped (SIGINT, as Ctrl-C, then SIGKILL if it hangs) at the end and on error.

`--profile DIR` runs `py-spy record --format raw --threads` (pip install py-spy into the venv)
against the server during each measured window, writes DIR/<phase>.txt (collapsed stacks: load
them in https://speedscope.app or flamegraph.pl) and DIR/<phase>.summary.txt, and prints the
hottest functions by own and inclusive samples, per thread. `--profile-gil` samples only the
thread holding the GIL (what the server's one core of Python is spent on). Sampling perturbs
the figures, so take the headline numbers from a run without --profile.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import announce, comma_list, machine, make_workdir, mark, record, remove_workdir
from harness_profile import summarize_profile
from harness_server import Server
from ingest_ceiling import measure_ceiling
from ingest_driver import PhaseSpec, run_phase

TARGET_BATCH_EVENTS_PER_S = 20_000
TARGET_SINGLE_REQUESTS_PER_S = 2_000
TARGET_SINGLE_P99_MS = 25.0


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def _cpu_line(result: dict[str, Any]) -> str:
    others = result["machine_busy_cores"] - result["server_cores"] - result["driver_cores"]
    return (
        f"CPU (cores busy): server {result['server_cores']:.2f} "
        f"(event-loop thread {result['server_loop_cores']:.2f}), "
        f"driver {result['driver_cores']:.2f}, other processes {max(0.0, others):.2f}"
    )


def _statuses(result: dict[str, Any]) -> str:
    others = {k: v for k, v in result["window_status"].items() if k != 200}
    too_many = others.pop(429, 0)
    text = f"429: {too_many}"
    if others:
        text += ", other non-200: " + ", ".join(f"{k}: {v}" for k, v in sorted(others.items()))
    return text


def _latency(result: dict[str, Any]) -> str:
    return (
        f"p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  "
        f"p99 {result['p99_ms']:.1f} ms  max {result['max_ms']:.1f} ms"
    )


def summary_lines(
    phases: dict[str, dict[str, Any]], ceiling: dict[str, Any] | None, verified: list[str]
) -> list[str]:
    batch, single, paced = phases.get("batch"), phases.get("single"), phases.get("paced")
    lines: list[str] = []
    targets = ["targets:"]
    if batch is not None:
        batch_rate = batch["events_ok"] / batch["window_s"]
        lines += [
            f"batch  /v1/batch ({batch['connections']} connections, {batch['events_per_request']} "
            f"events/request, ~{batch['event_bytes']} B/event):",
            f"  {batch_rate:,.0f} events/s  ({batch['requests_ok'] / batch['window_s']:,.1f} "
            f"requests/s; per request p50 {batch['p50_ms']:.1f} ms, "
            f"p99 {batch['p99_ms']:.1f} ms; {_statuses(batch)})",
            f"  {_cpu_line(batch)}",
        ]
        targets.append(
            f"  batch  >= {TARGET_BATCH_EVENTS_PER_S:,} events/s: {batch_rate:,.0f}  "
            f"{mark(batch_rate >= TARGET_BATCH_EVENTS_PER_S)}"
        )
    if single is not None:
        single_rate = single["requests_ok"] / single["window_s"]
        lines += [
            f"single /v1/track, closed loop ({single['connections']} connections, each sends "
            "again on every reply):",
            f"  {single_rate:,.0f} requests/s  {_latency(single)}  ({_statuses(single)})",
            f"  {_cpu_line(single)}",
        ]
        targets.append(
            f"  single >= {TARGET_SINGLE_REQUESTS_PER_S:,} requests/s (closed loop): "
            f"{single_rate:,.0f}  {mark(single_rate >= TARGET_SINGLE_REQUESTS_PER_S)}"
        )
    if paced is not None:
        achieved = paced["requests_ok"] / paced["window_s"]
        lines += [
            f"single /v1/track, open loop at {paced['rate']:,.0f} requests/s offered "
            f"({paced['connections']} connections; latency from the scheduled start, so "
            "queueing counts):",
            f"  {achieved:,.0f} requests/s  {_latency(paced)}  ({_statuses(paced)}; "
            f"most waiting for a connection: {paced['max_backlog']})",
            f"  {_cpu_line(paced)}",
        ]
    latency = paced or single
    if latency is not None:
        p99 = latency["p99_ms"]
        loop = "open loop" if latency is paced else "closed loop"
        targets.append(
            f"  single p99 <= {TARGET_SINGLE_P99_MS:g} ms ({loop}): {p99:.1f} ms  "
            f"{mark(p99 <= TARGET_SINGLE_P99_MS)}"
        )
    if ceiling is not None and batch is not None:
        ratio = batch["events_ok"] / batch["window_s"] / ceiling["sqlite3_100"]
        lines += [
            f"ceiling: the server's batch rows ({ceiling['rows']:,}, "
            f"~{ceiling['payload_bytes']} B payload) inserted directly, WAL + synchronous=FULL:",
            f"  sqlite3 executemany, 100-row transactions:    {ceiling['sqlite3_100']:,.0f} rows/s",
            f"  tessera append_events, 100-row transactions: "
            f"{ceiling['sqlalchemy_100']:,.0f} rows/s",
            f"  sqlite3 executemany, 1000-row transactions:   "
            f"{ceiling['sqlite3_1000']:,.0f} rows/s",
            f"  server / ceiling (batch events/s / sqlite3 100-row rows/s): {ratio:.2f}",
        ]
    lines += targets
    lines += ["stored = acknowledged:", *(f"  {line}" for line in verified)]
    for result in phases.values():
        for status, body in result["error_samples"].items():
            lines.append(f"  sample {result['name']} {status} body: {body}")
        if result["disconnects"] or result["still_in_flight"] or result["unsent"]:
            lines.append(
                f"  {result['name']}: {result['disconnects']} disconnects, "
                f"{result['still_in_flight']} requests unanswered and {result['unsent']} "
                "never sent at the end"
            )
    return lines


RESULTS_HEADER = """# Ingest benchmark results

Each section is one run of `.venv/bin/python benchmarks/ingest.py --record` (see the
docstring of `benchmarks/ingest.py` for what is measured and how). Figures are from whatever
machine ran them, on SQLite with synchronous=FULL; "other processes" is CPU used by anything
else on the machine during the measured window (a concurrent test run makes figures noisy).
Targets: >= 20,000 events/s through /v1/batch; >= 2,000 single calls/s with p99 <= 25 ms.
"""


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `tessera serve` ingest on SQLite (see the module docstring)."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--quick", action="store_true", help="short run: 1 s warm-up, 3 s phases")
    parser.add_argument("--batch-connections", type=int, default=8)
    parser.add_argument(
        "--single-connections", type=int, default=32, help="closed-loop single-call connections"
    )
    parser.add_argument(
        "--single-rate",
        type=float,
        default=TARGET_SINGLE_REQUESTS_PER_S,
        help="requests/s offered in the open-loop single-call phase (0 skips it)",
    )
    parser.add_argument(
        "--paced-connections", type=int, default=64, help="connections of the open-loop phase"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request")
    parser.add_argument(
        "--ceiling-rows", type=int, default=300_000, help="most stored rows reused for the ceiling"
    )
    parser.add_argument(
        "--phases",
        type=comma_list,
        default=["batch", "single", "paced"],
        help="comma-separated subset of batch,single,paced to run (the ceiling needs batch)",
    )
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the server into DIR/<phase>.txt"
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--profile-gil", action="store_true", help="py-spy --gil: only the thread holding the GIL"
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: C frames too (slow: perturbs the server a lot)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    unknown = set(args.phases) - {"batch", "single", "paced"}
    if unknown or not args.phases:
        parser.error(f"--phases takes batch, single and paced; got {args.phases}")
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
        args.ceiling_rows = min(args.ceiling_rows, 50_000)
    return args


def _verify(server: Server, label: str, like: str, acked: int) -> str:
    stored = server.count_events(like)
    verdict = "OK" if stored == acked else "MISMATCH"
    return f"{label}: {stored:,} stored, {acked:,} acknowledged with 200  {verdict}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    announce("ingest", info, load=False)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = make_workdir("ingest")
    try:
        return _run(args, info, workdir)
    finally:
        remove_workdir(workdir, keep=args.keep)


def _run(args: argparse.Namespace, info: dict[str, str], workdir: Path) -> int:
    server = Server(workdir)
    phases: dict[str, dict[str, Any]] = {}
    verified: list[str] = []
    try:
        server.start()
        print(f"server: pid {server.pid}, http://127.0.0.1:{server.port}, {server.database}")
        common = {
            "host": "127.0.0.1",
            "port": server.port,
            "write_key": server.write_key,
            "warmup": args.warmup,
            "duration": args.duration,
            "batch_size": args.batch_size,
            "server_pid": server.pid,
        }
        specs = [
            PhaseSpec(
                "batch", "batch", connections=args.batch_connections, id_prefix="b-", **common
            ),
            PhaseSpec(
                "single", "single", connections=args.single_connections, id_prefix="s-", **common
            ),
        ]
        if args.single_rate > 0:
            specs.append(
                PhaseSpec(
                    "paced",
                    "single",
                    connections=args.paced_connections,
                    id_prefix="p-",
                    rate=args.single_rate,
                    **common,
                )
            )
        specs = [spec for spec in specs if spec.name in args.phases]
        profiler_args = ["--gil"] * args.profile_gil + ["--native"] * args.profile_native
        for spec in specs:
            print(
                f"{spec.name} phase: {args.warmup:g} s warm-up + {args.duration:g} s ...",
                flush=True,
            )
            result = run_phase(spec, args.profile, args.profile_rate, profiler_args)
            phases[spec.name] = result
            like = f"{spec.id_prefix}%"
            verified.append(_verify(server, spec.name, like, result["total_events_ok"]))
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
        if server.process is not None and server.process.returncode not in (0, None):
            print(f"note: the server exited with {server.process.returncode}")
    ceiling = None
    if "batch" in phases and args.ceiling_rows > 0:
        print("ceiling: direct inserts ...", flush=True)
        ceiling = measure_ceiling(workdir, server.database, "b-%", args.ceiling_rows)
    lines = summary_lines(phases, ceiling, verified)
    print()
    print("\n".join(lines))
    if args.profile:
        for name in phases:
            path = args.profile / f"{name}.txt"
            if path.exists():
                text = summarize_profile(path, args.duration, args.profile_rate)
                (args.profile / f"{name}.summary.txt").write_text(text + "\n")
                print()
                print(text)
    if args.record:
        record(
            info["date"],
            lines,
            info=info,
            header=RESULTS_HEADER,
            run=f"warm-up {args.warmup:g} s, {args.duration:g} s per phase, "
            f"{args.batch_connections} batch / {args.single_connections} single connections, "
            f"open loop at {args.single_rate:g}/s on {args.paced_connections}"
            + (", profiled with py-spy" if args.profile else ""),
        )
    return 0 if all(line.endswith("OK") for line in verified) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        sys.exit(130)
