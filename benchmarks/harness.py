"""What every benchmark reports the same way: the machine, percentiles, CPU, RESULTS.md.

The other shared parts are by concern: `harness_server.py` (`tessera serve` and the CLI,
child processes, a minimal HTTP client), `harness_profile.py` (py-spy) and `harness_store.py`
(fresh stores and the demo's data without HTTP).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# The machine and the settings a run was taken with.
# --------------------------------------------------------------------------------------------


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "unknown"


def machine() -> dict[str, str]:
    """Date, cores, CPU model, Python, commit and the load average before the run."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "commit": commit,
        "load": load_average(),
    }


def tessera_overrides() -> dict[str, str]:
    """TESSERA_* settings from our environment that reach the server (experiments such as
    TESSERA_SQLITE_SYNCHRONOUS=NORMAL); the database URL and log level are always ours."""
    ours = ("TESSERA_DATABASE_URL", "TESSERA_LOG_LEVEL")
    return {k: v for k, v in os.environ.items() if k.startswith("TESSERA_") and k not in ours}


def announce(name: str, info: dict[str, str], *, load: bool = True) -> None:
    """The run's first lines: what, when, on what machine, with which settings."""
    print(
        f"tessera {name} benchmark: {info['date']}, {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}, commit {info['commit']}"
    )
    if load and info["load"] != "unknown":
        print(f"load average before the run: {info['load']}")
    overrides = tessera_overrides()
    if overrides:
        print(
            "settings from the environment: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        )


# --------------------------------------------------------------------------------------------
# Percentiles and the way figures are written.
# --------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank), NaN when empty."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def ms(seconds: float, digits: int = 1) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:.{digits}f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cores(ticks: float, seconds: float) -> float:
    """Clock ticks of CPU over `seconds` of wall time, as cores busy."""
    return ticks / TICK / seconds if seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# CPU, from /proc: processes (all their threads), this process, the whole machine.
# --------------------------------------------------------------------------------------------


def cpu_ticks_of(pid: int) -> tuple[int, int]:
    """(CPU ticks of the main thread, CPU ticks of all threads) of process `pid`."""
    main = total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        total += ticks
        if int(task) == pid:
            main = ticks
    return main, total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8])


def children_of(pid: int) -> list[int]:
    """The direct child processes of `pid` (e.g. `tessera serve`'s workers)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found += [int(child) for child in children.read().split()]
    return found


@dataclass
class CpuSnapshot:
    """CPU of a server (main thread, all threads), this process and the machine, at once."""

    server_main: int
    server_all: int
    driver: float
    machine_busy: int

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        main, total = cpu_ticks_of(server_pid)
        usage = os.times()
        return cls(main, total, usage.user + usage.system, machine_ticks()[0])


def own_cpu() -> tuple[float, float]:
    """(this process's CPU seconds, the machine's busy seconds)."""
    return sum(os.times()[:2]), machine_ticks()[0] / TICK


def own_cores(before: tuple[float, float], elapsed: float) -> tuple[float, float]:
    """(cores this process used, cores everything else used) since `before` (`own_cpu`)."""
    cpu, busy = own_cpu()
    mine = cpu - before[0]
    return mine / elapsed, max(0.0, busy - before[1] - mine) / elapsed


def rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the
    parent that spawned it)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def other_cores(result: dict[str, Any], *measured: str) -> float:
    """The machine's busy cores (`machine_cores`) less those of the `measured` keys."""
    busy: float = result["machine_cores"] - sum(result[key] for key in measured)
    return max(0.0, busy)


def make_workdir(name: str) -> Path:
    """A new temporary directory for one run's stores and logs."""
    return Path(tempfile.mkdtemp(prefix=f"tessera-{name}-bench-"))


def remove_workdir(workdir: Path, *, keep: bool) -> None:
    """The end of a run: remove its directory, or say where it is (--keep)."""
    if keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Command lines.
# --------------------------------------------------------------------------------------------


def comma_list(text: str) -> list[str]:
    """`a, b,c` -> ["a", "b", "c"] (an argparse type)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def comma_numbers(text: str) -> list[int]:
    return [int(part) for part in comma_list(text)]


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """--record, --profile DIR, --profile-rate and --keep, as the part benchmarks take them."""
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy into DIR/<part>.txt")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")


# --------------------------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------------------------


def record(
    heading: str,
    lines: list[str],
    *,
    info: dict[str, str],
    run: str,
    note: str | None = None,
    bullets: Sequence[str] = (),
    settings: bool = True,
    machine_suffix: str = "",
    header: str | None = None,
) -> None:
    """Append one run to RESULTS.md: `## heading`, the note, the machine, the commit, the
    `bullets`, the TESSERA_* settings from the environment, the run line, then `lines` as a
    code block. `header` starts the file when it does not exist yet."""
    if header is not None and not RESULTS.exists():
        RESULTS.write_text(header)
    section = ["", f"## {heading}", ""]
    if note is not None:
        section += [note, ""]
    section += [
        f"- machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}"
        + machine_suffix,
        f"- commit: {info['commit']}",
        *bullets,
    ]
    if settings:
        section += [
            f"- setting from the environment: {k}={v}" for k, v in tessera_overrides().items()
        ]
    section += [f"- run: {run}", "", "```", *lines, "```", ""]
    with RESULTS.open("a") as results:
        results.write("\n".join(section))
    print(f"appended to {RESULTS.relative_to(ROOT)}")
