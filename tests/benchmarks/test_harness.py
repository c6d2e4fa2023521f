"""The benchmark harness's pure helpers: the figures every benchmark reports rest on them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import harness
import harness_profile
import harness_server
import pipeline_driver


def test_pct_is_the_nearest_rank_of_sorted_values() -> None:
    values = [float(n) for n in range(1, 101)]  # 1..100
    assert harness.pct(values, 0.5) == 51.0
    assert harness.pct(values, 0.95) == 96.0
    assert harness.pct(values, 1.0) == 100.0  # never past the end
    assert harness.pct([7.0], 0.99) == 7.0
    assert harness.pct([], 0.5) != harness.pct([], 0.5)  # NaN when there is nothing


def test_ms_writes_infinity_for_what_never_arrived() -> None:
    assert harness.ms(0.0125) == "12.5 ms"
    assert harness.ms(float("inf")) == "inf"


def test_env_flags_become_tessera_settings() -> None:
    flags = harness_server.tessera_flags(["processor_derived=separate", "TESSERA_X=a=b"])
    assert flags == {"TESSERA_PROCESSOR_DERIVED": "separate", "TESSERA_X": "a=b"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        harness_server.tessera_flags(["no-value"])


def test_profile_summary_counts_busy_samples_per_function(tmp_path: Path) -> None:
    raw = tmp_path / "server.txt"
    raw.write_text(
        "thread (1): MainThread;main (app.py:1);work (app.py:5) 30\n"
        "thread (1): MainThread;main (app.py:1);parse (app.py:9) 10\n"
        "thread (2): writer;run (threading.py:10);Event.wait (threading.py:600) 60\n"
    )
    text = harness_profile.summarize_profile(raw, seconds=1, rate=100)
    assert "40 busy" in text
    assert " 75.0%  work (app.py)" in text  # 30 of the 40 busy samples
    assert "Event.wait" not in text.split("own time by function:")[1]


def test_step_bodies_give_every_lap_new_message_ids() -> None:
    messages = [b'{"type":"track","messageId":"m1"}', b'{"type":"track","messageId":"m2"}']
    bodies, position = pipeline_driver.step_bodies(messages, 1, 3, 2, "s0l")
    assert position == 4
    assert [count for _, count in bodies] == [2, 1]
    assert bodies[0][0] == (
        b'{"batch":[{"type":"track","messageId":"s0l0-m2"},{"type":"track","messageId":"s0l1-m1"}]}'
    )
    assert b'"messageId":"s0l1-m2"' in bodies[1][0]
