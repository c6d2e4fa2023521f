"""Real-time capacity, end to end: how many events a second does a default `tessera serve`
take in and fully process (identity, profiles, 12 computed traits, 50 audiences, a webhook on
their changes) with the processor's lag p95 within 1 s, on this machine?

    .venv/bin/python benchmarks/pipeline.py                      # 2k..10k events/s, 60 s each
    .venv/bin/python benchmarks/pipeline.py --quick              # two short steps, ~1.5 min
    .venv/bin/python benchmarks/pipeline.py --derived inline,separate   # both, one after the other
    .venv/bin/python benchmarks/pipeline.py --env PROCESSOR_BATCH_EVENTS=5000
    .venv/bin/python benchmarks/pipeline.py --profile 8000       # py-spy the 8,000/s step
    .venv/bin/python benchmarks/pipeline.py --record --label "quiet machine"

For each `--derived` mode, one run:

1. `tessera serve` as a subprocess on a fresh SQLite file in a temporary directory, with its
   defaults (the processor in a child `tessera worker`; two children with `separate`), plus
   TESSERA_* from the environment and `--env`. An admin token from `tessera token create`.
2. Through the management API, as a user would: benchmarks/audiences.py's 12 computed traits
   and 50 audiences (`audiences_definitions`), and one webhook destination subscribed to the
   entries and exits of all 50, pointed at a receiver on 127.0.0.1 in its own process that
   notes when each message arrives (`harness_receiver`).
3. A load generator in a spawned process (`pipeline_driver`) generates the demo's journeys
   (`tessera.demo`: anonymous browsing, sign-ups and logins, orders; `--people`), each message
   with its messageId and without timestamps (the server stamps them as received, as for
   events sent in real time). For each rate of `--rates` it builds every /v1/batch body of the
   step first (messageIds made unique per lap over the journeys), then sends them open loop,
   `--batch-size` events a request on `--connections` connections, for `--warmup` +
   `--duration` seconds. Meanwhile:
   - every `--lag-interval` s it reads GET /readyz: the processor's lag is the age of the
     oldest event not yet applied by both stages (`oldest_waiting_seconds`, the later stage);
   - `--probe-rate` times a second a new user sends a "Signed In" event, which enters the
     audience "signed in lately"; the generator polls GET /api/v1/profiles/user_id:<id> every
     `--poll-interval` s (5x that after 2 s) until the audience shows (event -> audience
     visible), and the receiver notes when the webhook's entry for that user arrives
     (event -> webhook).
   After the window it waits (up to `--catch-up` s) until the processor has applied all.
   Counted in the window: events acknowledged, lag p50/p95/max, probe percentiles (one never
   visible counts as infinitely late), and the CPU of every process from /proc (server, its
   workers, the receiver, the generator itself and everything else on the machine).
4. A step is sustained when its lag p95 <= `--lag-limit` (1 s) and it took >= 95% of the
   offered rate; the real-time capacity is the highest sustained rate. By default the run
   stops after the first step that is not sustained (`--all-steps` goes on).

The generator shares the machine's cores with the server (the table shows its CPU): at
10,000 events/s it needs a few percent of a core, since every body is built before its step
(about 1 GB of memory at that rate: the journeys encoded once, and the step's bodies).
`--profile RATE` runs `py-spy record` on the server and its workers during that step's window
and writes DIR/<mode>-<process>.txt (collapsed stacks: speedscope.app or flamegraph.pl) and
.summary.txt; DIR is `--profile-dir` or a new temporary directory, printed. The server is
always stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
from audiences_definitions import AUDIENCES, NAMED_TRAITS, resolve
from harness import (
    announce,
    comma_list,
    machine,
    make_workdir,
    mark,
    ms,
    pct,
    record,
    remove_workdir,
    tessera_overrides,
)
from harness_profile import finish_spy, start_spy, write_summary
from harness_receiver import Receiver
from harness_server import Server, create_token, receive, run_child, stop_child, tessera_flags
from harness_store import region_of
from harness_store import settings as default_settings
from pipeline_driver import DriverSpec, driver_main, sustained

PROBE_AUDIENCE = "signed in lately"
TARGET_EVENTS_PER_S = 8_000
QUICK_RATES = [2_000.0, 4_000.0]
RESULTS_SECTION_NOTE = """\
One run of `.venv/bin/python benchmarks/pipeline.py --record` (see its docstring): a default
`tessera serve` with 12 computed traits, 50 audiences and a webhook on their changes, demo
traffic through /v1/batch at stepped rates. Target: >= 8,000 events/s with lag p95 <= 1 s."""


def create_definitions(
    api: httpx.Client, receiver_url: str, args: argparse.Namespace
) -> dict[str, str]:
    """The traits, audiences and webhook through the API; audience name -> id."""

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = api.post(path, json=body)
        if response.status_code != 201:
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
        return response.json()  # type: ignore[no-any-return]

    for document in NAMED_TRAITS:
        post("/api/v1/computed-traits", document)
    ids: dict[str, str] = {}
    for name, document in AUDIENCES:
        body = {"name": name, "description": "benchmarks/pipeline.py"}
        ids[name] = post("/api/v1/audiences", {**body, "definition": resolve(document, ids)})["id"]
    config = {"url": receiver_url, "batch_size": args.webhook_batch_size}
    post(
        "/api/v1/destinations",
        {
            "name": "pipeline webhook",
            "type": "webhook",
            "config": config,
            "subscriptions": [
                {
                    "type": "audience",
                    "audiences": list(ids.values()),
                    "changes": ["entered", "exited"],
                }
            ],
        },
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # an empty log: backfills and builds are immediate
        traits = api.get("/api/v1/computed-traits", params={"include_implicit": True}).json()
        audiences = api.get("/api/v1/audiences").json()
        if all(item["status"] == "ready" for item in [*traits, *audiences]):
            return ids
        time.sleep(0.2)
    raise RuntimeError("the definitions did not turn ready within 120 s")


def webhook_latencies(step: dict[str, Any], entries: dict[str, float]) -> list[float]:
    """Seconds from each counted probe's send to its entry's arrival (never: inf)."""
    out = []
    for probe in step["probes"]:
        if probe.get("error"):
            continue
        arrived = entries.get(probe["user"])
        out.append(arrived - probe["sent_wall"] if arrived is not None else float("inf"))
    return sorted(out)


def wait_for_entries(
    receiver: Receiver, steps: list[dict[str, Any]], audience_id: str, timeout: float
) -> dict[str, float]:
    """Probe user -> when its entry into the probe audience first reached the webhook,
    waiting up to `timeout` s for the probes' entries still being delivered."""
    wanted = {p["user"] for step in steps for p in step["probes"] if not p.get("error")}
    deadline = time.monotonic() + timeout
    while True:
        entries: dict[str, float] = {}
        for user, audience, arrived in receiver.entries():
            if audience == audience_id and arrived < entries.get(user, float("inf")):
                entries[user] = arrived
        if wanted <= entries.keys() or time.monotonic() > deadline:
            return entries
        time.sleep(0.5)


def outbox_states(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}


def follow_driver(
    conn: Connection,
    process: BaseProcess,
    args: argparse.Namespace,
    mode: str,
    spies: dict[str, Any],
) -> list[dict[str, Any]]:
    """Print the driver's progress, py-spy the `--profile` step; the steps' figures."""
    steps: list[dict[str, Any]] = []
    limit = args.warmup + args.duration + args.probe_timeout + args.catch_up + 600
    while True:
        kind, value = receive(conn, process, limit)
        if kind == "built":
            print(
                f"  {value['rate']:,.0f} events/s: {value['bodies']:,} bodies built in "
                f"{value['s']:.1f} s; {args.warmup:g} s warm-up + {args.duration:g} s ...",
                flush=True,
            )
        elif kind == "measuring" and args.profile == value["rate"]:
            for name, pid in value["pids"].items():
                if name != "receiver":
                    output = args.profile_dir / f"{mode}-{name}.txt"
                    spies[name] = start_spy(pid, output, args.profile_rate, args.duration)
        elif kind == "step":
            steps.append(value)
            for spy in spies.values():
                finish_spy(spy)
            spies.clear()
            print(f"    {step_line(value, args.lag_limit)}", flush=True)
        elif kind == "result":
            return steps


def run_mode(
    mode: str, args: argparse.Namespace, workdir: Path, receiver: Receiver, region: str
) -> list[dict[str, Any]]:
    """One server in `mode` (inline or separate) through every step; the steps' figures."""
    env = {**tessera_flags(args.env), "TESSERA_PROCESSOR_DERIVED": mode}
    directory = workdir / mode
    directory.mkdir()
    server = Server(directory, env=env)
    token = create_token(server.database, role="admin")
    steps: list[dict[str, Any]] = []
    process = None
    spies: dict[str, Any] = {}
    finished = False
    try:
        server.start()
        with httpx.Client(
            base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as api:
            ids = create_definitions(api, receiver.url, args)
        receiver.reset()
        spec = DriverSpec(
            host="127.0.0.1",
            port=server.port,
            write_key=server.write_key,
            token=token,
            server_pid=server.pid,
            receiver_pid=receiver.pid,
            rates=args.rates,
            warmup=args.warmup,
            duration=args.duration,
            batch_size=args.batch_size,
            connections=args.connections,
            people=args.people,
            seed=args.seed,
            region=region,
            probe_rate=args.probe_rate,
            probe_audience=ids[PROBE_AUDIENCE],
            poll_interval=args.poll_interval,
            probe_timeout=args.probe_timeout,
            lag_interval=args.lag_interval,
            lag_limit=args.lag_limit,
            catch_up_limit=args.catch_up,
            stop_after_fail=not args.all_steps,
            tag=uuid.uuid4().hex[:6],
        )
        print(f"{mode}: server pid {server.pid}, {server.base}; generating the traffic ...")
        ready, conn, process = run_child(driver_main, (spec,), "pipeline-driver", 600)
        print(f"  {ready['messages']:,} demo messages in {ready['generate_s']:.1f} s", flush=True)
        conn.send("go")
        steps = follow_driver(conn, process, args, mode, spies)
        finished = True
        entries = wait_for_entries(receiver, steps, ids[PROBE_AUDIENCE], args.probe_timeout)
        for step in steps:
            webhook = webhook_latencies(step, entries)
            step["webhook_p50"], step["webhook_p95"] = pct(webhook, 0.5), pct(webhook, 0.95)
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if process is not None:
            stop_child(process, finished)
        for spy in spies.values():
            finish_spy(spy)
        server.stop()
    if steps:
        steps[-1]["outbox"] = outbox_states(server.database)
        steps[-1]["webhook_messages"] = receiver.stats()["messages"]
    if args.profile is not None:
        for output in sorted(args.profile_dir.glob(f"{mode}-*.txt")):
            if not output.name.endswith(".summary.txt"):
                write_summary(output, args.duration, args.profile_rate)
    return steps


def step_line(step: dict[str, Any], lag_limit: float) -> str:
    cores = step["cores"]
    workers = "+".join(f"{cores[k]:.2f}" for k in sorted(cores) if k.startswith("worker"))
    return (
        f"{step['rate']:>7,.0f} {step['events_per_s']:>9,.0f} {step['lag_p50']:>7.2f} "
        f"{step['lag_p95']:>7.2f} {step['lag_max']:>7.2f} {ms(step['visible_p95'], 0):>11} "
        f"{ms(step['webhook_p95'], 0) if 'webhook_p95' in step else '(later)':>11} "
        f"{step['catch_up_s']:>7.1f} "
        f"  {cores['server']:.2f} / {workers or '-'} / {cores['receiver']:.2f} / "
        f"{cores['generator']:.2f} / {cores['others']:.2f}"
        f"  {'sustained' if sustained(step, lag_limit) else 'NOT sustained'}"
    )


HEADER = (
    "  asked  ingested lag p50 lag p95 lag max visible p95 webhook p95 catchup"
    "   CPU cores: server / worker(s) / receiver / generator / others"
)


def summary_lines(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    capacities = {}
    for mode, steps in runs.items():
        lines += [
            f"TESSERA_PROCESSOR_DERIVED={mode}: events/s asked and ingested, lag in s, "
            f"probes' p95 (event -> in the audience through GET /api/v1/profiles; "
            f"-> webhook received), catch-up s after the step",
            HEADER,
            *(f"  {step_line(step, args.lag_limit)}" for step in steps),
        ]
        for step in steps:
            for where, body in step["errors"].items():
                lines.append(f"  sample {where} at {step['rate']:,.0f}/s: {body}")
        if steps and "outbox" in steps[-1]:
            states = ", ".join(f"{k} {v:,}" for k, v in sorted(steps[-1]["outbox"].items()))
            lines.append(
                f"  webhook: {steps[-1]['webhook_messages']:,} audience changes received; "
                f"outbox at the end: {states or 'empty'}"
            )
        kept = [step["rate"] for step in steps if sustained(step, args.lag_limit)]
        capacities[mode] = max(kept, default=0.0)
        lines.append(
            f"  real-time capacity (lag p95 <= {args.lag_limit:g} s): "
            + (f"{capacities[mode]:,.0f} events/s" if kept else "none of the rates")
            + f"; target >= {TARGET_EVENTS_PER_S:,}: "
            + mark(capacities[mode] >= TARGET_EVENTS_PER_S)
        )
    lines.append(
        "the load generator shares the machine's cores with the server (its CPU is in the "
        "table); 'others' is everything else on the machine"
    )
    if len(capacities) > 1:
        lines.append(
            "capacity by mode: "
            + ", ".join(f"{mode} {value:,.0f}" for mode, value in capacities.items())
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Real-time capacity (see the module docstring).")
    numbers = lambda text: [float(x) for x in text.split(",") if x.strip()]  # noqa: E731
    parser.add_argument("--rates", type=numbers, default=[2e3, 4e3, 6e3, 8e3, 10e3])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds a step")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--quick", action="store_true", help="2,000 and 4,000/s, 10 s each")
    parser.add_argument(
        "--derived",
        type=comma_list,
        default=["inline"],
        help="TESSERA_PROCESSOR_DERIVED: inline, separate or inline,separate (one run each)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="a server setting"
    )
    parser.add_argument("--people", type=int, default=20_000, help="demo people in the traffic")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=100, help="events per /v1/batch")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--webhook-batch-size", type=int, default=100)
    parser.add_argument("--probe-rate", type=float, default=2.0, help="probes per second")
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--probe-timeout", type=float, default=30.0)
    parser.add_argument("--lag-interval", type=float, default=0.1, help="seconds between reads")
    parser.add_argument("--lag-limit", type=float, default=1.0, help="sustained: lag p95 within")
    parser.add_argument("--catch-up", type=float, default=120.0, help="wait after a step at most")
    parser.add_argument("--all-steps", action="store_true", help="go on after a failed step")
    parser.add_argument("--profile", type=float, metavar="RATE", help="py-spy the step at RATE")
    parser.add_argument("--profile-dir", type=Path, help="where (default: a new temp dir)")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument("--label", default="", help="a note recorded with the run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if set(args.derived) - {"inline", "separate"} or not args.derived:
        parser.error(f"--derived takes inline and/or separate; got {args.derived}")
    try:
        tessera_flags(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    if args.quick:
        if args.rates == parser.get_default("rates"):
            args.rates = QUICK_RATES
        args.duration, args.warmup = min(args.duration, 10.0), min(args.warmup, 2.0)
        args.people = min(args.people, 3_000)
        args.catch_up = min(args.catch_up, 60.0)
    if args.profile is not None and args.profile not in args.rates:
        parser.error(f"--profile {args.profile:g} is not one of --rates {args.rates}")
    if args.profile is not None and args.profile_dir is None:
        args.profile_dir = Path(tempfile.mkdtemp(prefix="tessera-pipeline-profile-"))
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    announce("pipeline", info)
    if args.env:
        print("settings from --env: " + ", ".join(args.env))
    region = region_of(default_settings())
    workdir = make_workdir("pipeline")
    runs: dict[str, list[dict[str, Any]]] = {}
    receiver: Receiver | None = None
    try:
        receiver = Receiver()
        for mode in args.derived:
            runs[mode] = run_mode(mode, args, workdir, receiver, region)
    finally:
        if receiver is not None:
            receiver.stop()
        remove_workdir(workdir, keep=args.keep)
    lines = summary_lines(runs, args)
    print()
    print("\n".join(lines))
    if args.profile is not None:
        print(f"\npy-spy profiles of the {args.profile:,.0f} events/s step: {args.profile_dir}")
        for path in sorted(args.profile_dir.glob("*.summary.txt")):
            print(f"  {path}")
    if args.record:
        record(
            f"pipeline {info['date']}",
            lines,
            info=info,
            note=RESULTS_SECTION_NOTE,
            bullets=[f"- load average before the run: {info['load']}"]
            + ([f"- note: {args.label}"] if args.label else [])
            + [f"- setting from --env: {pair}" for pair in args.env],
            run=f"rates {','.join(f'{r:g}' for r in args.rates)} events/s, {args.warmup:g} s "
            f"warm-up + {args.duration:g} s each; {args.people:,} demo people; derived "
            f"{','.join(args.derived)}" + (", profiled with py-spy" if args.profile else ""),
        )
    return 0


if __name__ == "__main__":
    if tessera_overrides().get("TESSERA_PROCESSOR_DERIVED"):
        print("note: --derived sets TESSERA_PROCESSOR_DERIVED for each run", file=sys.stderr)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the server, receiver and generator were stopped", file=sys.stderr)
        sys.exit(130)
