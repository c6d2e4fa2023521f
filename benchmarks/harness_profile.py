"""py-spy for benchmarks: sample a process into collapsed stacks, and summarise them as the
hottest packages, functions and lines, per thread."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from harness import ROOT


def py_spy() -> str | None:
    script = Path(sys.executable).parent / "py-spy"
    return str(script) if script.exists() else shutil.which("py-spy")


def start_spy(
    pid: int,
    output: Path,
    rate: int,
    duration: float | None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """py-spy on `pid` into `output` (raw collapsed stacks, per thread): for `duration`
    seconds, or until the process exits when None. `extra`: more py-spy flags (--gil)."""
    exe = py_spy()
    if exe is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    command = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    command += ["--threads", "--nonblocking", "-o", str(output)]
    if duration is not None:
        command += ["--duration", str(max(1, round(duration)))]
    command += extra
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_spy(spy: subprocess.Popen[bytes] | None, timeout: float = 120) -> None:
    """Wait for py-spy to write its file (it stops at its duration or the process's end)."""
    if spy is None:
        return
    try:
        _, stderr = spy.communicate(timeout=timeout)
        if spy.returncode != 0:
            print(f"  py-spy failed: {stderr.decode(errors='replace').strip()[-500:]}")
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def write_summary(
    output: Path | None, seconds: float, rate: int, ignore: Sequence[str] = ()
) -> str | None:
    """Summarise py-spy's `output` into `<output stem>.summary.txt` beside it; the text, or
    None when there is no profile."""
    if output is None or not output.exists():
        return None
    text = summarize_profile(output, seconds, rate, ignore=ignore)
    output.with_name(f"{output.stem}.summary.txt").write_text(text + "\n")
    return text


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path.removeprefix(str(ROOT) + "/")


def _frame_name(frame: str, with_line: bool) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    where = _short_path(match["file"])
    if with_line and match["line"]:
        where += f":{match['line']}"
    return f"{match['func']} ({where})"


def _package(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = _short_path(match["file"])
    parts = path.split("/")
    if parts[0] == "tessera" and len(parts) > 2:
        return "/".join(parts[:2])
    if parts[0] in ("", ".") or len(parts) == 1:
        return "stdlib:" + parts[-1].removesuffix(".py")
    if parts[0].startswith("python3") or parts[0] in ("asyncio", "concurrent", "threading.py"):
        return "stdlib:" + parts[0]
    return parts[0]


# Leaf frames where a thread sits waiting rather than running (py-spy's own idle detection
# misses these here), and frames every stack shares, which say nothing about the hot path
# (a server's uvicorn, a spawned child's multiprocessing and its benchmark wrapper).
_IDLE_LEAVES = {("wait", "threading.py"), ("select", "selectors.py")}
BOILERPLATE: tuple[str, ...] = (
    "threading.py",
    "typer/",
    "tessera/cli.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "asyncio/runners.py",
    "anyio/_backends/_asyncio.py",
    "queue.py",
    "(tessera)",
    "multiprocessing/",
    "<module> (<string>)",
    "benchmarks/harness",
)
_THREAD = re.compile(r"^thread \(\d+\): ?(?P<name>.*)$")


def _idle(leaf: str) -> bool:
    """A thread parked in Condition/Event.wait or an event loop's select (py-spy names them
    with or without their class: `select`, `EpollSelector.select`)."""
    match = _FRAME.match(leaf)
    if not match:
        return False
    return (match["func"].rsplit(".", 1)[-1], match["file"].rsplit("/", 1)[-1]) in _IDLE_LEAVES


def _thread_name(frame: str) -> str:
    match = _THREAD.match(frame)
    return (match["name"] or "thread") if match else frame


def summarize_profile(
    path: Path, seconds: float, rate: int, top: int = 20, ignore: Sequence[str] = ()
) -> str:
    """Hot spots from py-spy raw output (`--threads`): own (leaf) and inclusive samples as a
    share of the busy samples, i.e. excluding threads parked in a wait, and per thread.
    `ignore`: more frames every stack shares (the benchmark's own wrappers), left out of the
    inclusive table."""
    boilerplate = (*BOILERPLATE, *ignore)
    stacks: list[tuple[str, list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        thread = _thread_name(frames[0]) if frames[0].startswith("thread") else "?"
        body = [f for f in frames if not f.startswith(("thread (", "process "))]
        if body:
            stacks.append((thread, body, int(number)))
    total = sum(count for _, _, count in stacks)
    busy_stacks = [s for s in stacks if not _idle(s[1][-1])]
    busy = sum(count for _, _, count in busy_stacks)
    if not busy:
        return f"{path}: no busy samples"
    possible = seconds * rate
    threads: Counter[str] = Counter()
    idle_threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    per_thread_own: dict[str, Counter[str]] = defaultdict(Counter)
    for thread, _, count in stacks:
        idle_threads[thread] += count
    for thread, body, count in busy_stacks:
        threads[thread] += count
        idle_threads[thread] -= count
        leaf = body[-1]
        own[_frame_name(leaf, False)] += count
        own_lines[_frame_name(leaf, True)] += count
        packages[_package(leaf)] += count
        per_thread_own[thread][_frame_name(leaf, False)] += count
        for name in {_frame_name(f, False) for f in body}:
            if not any(marker in name for marker in boilerplate):
                inclusive[name] += count

    def table(title: str, counter: Counter[str], n: int = top) -> list[str]:
        rows = [f"  {title}"]
        for name, count in counter.most_common(n):
            rows.append(f"    {100 * count / busy:5.1f}%  {name}")
        return rows

    out = [
        f"profile {path.name}: {total} samples over ~{seconds:.0f} s at {rate} Hz, "
        f"{busy} busy (not parked in a wait); shares are of the busy samples",
        "  busy time per thread, as a share of one core (waiting for the GIL counts as busy):",
    ]
    for thread, count in threads.most_common():
        out.append(
            f"    {100 * count / possible:5.1f}%  {thread}"
            f"  (+{100 * idle_threads[thread] / possible:.0f}% parked)"
        )
    out += table("own time by package/module:", packages, 12)
    out += table("own time by function:", own)
    out += table("own time by line:", own_lines, 15)
    out += table("inclusive time by function (with what it calls):", inclusive, 30)
    for thread, counter in sorted(per_thread_own.items(), key=lambda kv: -threads[kv[0]])[:3]:
        out += table(f"own time in {thread}:", counter, 12)
    return "\n".join(out)
