"""bench/scaling_model.py: its arithmetic on small input files written here (no TensorFlow, no Ray)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scaling_model  # noqa: E402

MACHINE = {"cores": 2, "flags": ["avx512f", "avx512_bf16"]}


def _learner_rows(rates: dict[tuple[int, str], float], cores_used: float) -> list[dict]:
    return [{"batch": b, "double_dqn": True, "precision": pr, "ours_updates_per_s": {"median": u},
             "ours_updates_per_cpu_s": {"median": u / cores_used}} for (b, pr), u in rates.items()]


def write_inputs(tmp: Path, *, u1: float, u2: float, explorer: float, t_insert: float, t_sample32: float) -> list[str]:
    """Input files in the formats of bench/actor.py, bench/learner.py and end_to_end.py; every batch
    and precision updates at u1 (1 thread) and u2 (2 threads) x 32 / batch."""
    rows = {}
    for pr in ("auto", "float32"):
        rows.update({f"K={k} {pr}": {"envs": k, "precision": pr, "steps_per_s": {"cpu": {"median": explorer}}}
                     for k in (1, 8)})
    (tmp / "actor.json").write_text(json.dumps({"machine": MACHINE, "explorer": rows}))
    for threads, u in ((1, u1), (2, u2)):
        rates = {(b, pr): u * 32 / b for b in scaling_model.BATCHES for pr in ("auto", "float32")}
        (tmp / f"t{threads}.json").write_text(json.dumps({
            "machine": MACHINE, "args": {"threads": threads}, "matmul_peak": {"per_core": 100.0},
            "rows": _learner_rows(rates, cores_used=1.0)}))
    (tmp / "replay.json").write_text(json.dumps({"insert_s_per_transition": t_insert,
                                                 "sample_s_per_batch": {"32": t_sample32, "512": 16 * t_sample32}}))
    (tmp / "e2e.json").write_text(json.dumps({"machine": MACHINE, "launch": [
        {"config": "1x8", "num_actors": 1, "envs_per_actor": 8, "batch_size": 32, "extra_flags": [],
         "env_steps_per_s": 150.0, "updates_per_s": 37.5}]}))
    return ["--actor", str(tmp / "actor.json"), "--learner", f"{tmp / 't1.json'},{tmp / 't2.json'}",
            "--replay", str(tmp / "replay.json"), "--validate", str(tmp / "e2e.json")]


def test_the_prediction_is_the_lowest_ceiling_and_keeps_the_replay_ratio(tmp_path: Path) -> None:
    argv = write_inputs(tmp_path, u1=40.0, u2=60.0, explorer=1000.0, t_insert=20e-6, t_sample32=2e-3)
    result = scaling_model.main(argv)
    for shape in result["shapes"]:
        for c in [shape["defaults"], *shape["best_per_ratio"].values()]:
            known = [v for v in c["ceilings"].values() if v == v]
            assert c["agent_steps_per_s"] == pytest.approx(min(known))
            assert c["ceilings"][c["bottleneck"]] == pytest.approx(min(known))
            if c["learner_measured"]:
                assert c["updates_per_s"] == pytest.approx(c["agent_steps_per_s"] * c["ratio"] / c["batch"])
    gpu = result["shapes"][-1]
    assert not gpu["defaults"]["learner_measured"] and gpu["defaults"]["bottleneck"] != "learner"


def test_learner_threads_follow_amdahl_fitted_to_one_and_two(tmp_path: Path) -> None:
    write_inputs(tmp_path, u1=40.0, u2=60.0, explorer=1000.0, t_insert=20e-6, t_sample32=2e-3)
    inp = scaling_model.load(argparse.Namespace(
        actor=str(tmp_path / "actor.json"), learner=f"{tmp_path / 't1.json'},{tmp_path / 't2.json'}",
        replay=str(tmp_path / "replay.json"), gpu=""))
    assert inp.updates(32, "bfloat16", 1) == pytest.approx(40.0)
    assert inp.updates(32, "bfloat16", 2) == pytest.approx(60.0)
    serial = 2 * 40.0 / 60.0 - 1  # 1/3
    assert inp.updates(32, "bfloat16", 8) == pytest.approx(40.0 / (serial + (1 - serial) / 8))
    assert inp.updates(32, "bfloat16", 1000) < 40.0 / serial  # never past Amdahl's limit


def test_validation_divides_the_measured_run_by_the_prediction(tmp_path: Path) -> None:
    argv = write_inputs(tmp_path, u1=40.0, u2=40.0, explorer=1000.0, t_insert=20e-6, t_sample32=2e-3)
    (v,) = scaling_model.main(argv)["validation"]
    # 2 cores, 1 explorer: one learner thread; learner-bound at 40 x 32 / 8 = 160 agent steps/s
    assert v["predicted"]["bottleneck"] == "learner"
    assert v["predicted"]["agent_steps_per_s"] == pytest.approx(160.0)
    assert v["ratio_steps"] == pytest.approx(150.0 / 160.0)


def test_a_missing_input_is_one_line_that_says_what_to_run(tmp_path: Path) -> None:
    argv = write_inputs(tmp_path, u1=40.0, u2=60.0, explorer=1000.0, t_insert=20e-6, t_sample32=2e-3)
    (tmp_path / "replay.json").unlink()
    with pytest.raises(SystemExit) as exc:
        scaling_model.main(argv)
    msg = str(exc.value)
    assert "replay.json" in msg and "docs/scaling.md" in msg and "\n" not in msg


def test_the_replay_ceiling_form_gives_costs_that_reproduce_the_ceiling() -> None:
    """bench/replay_ceiling.py's JSON: inserting at the ceiling while serving its batches fills one core."""
    data = {"args": {"batch": 512}, "rows": [{"batches_s": 30.0}, {"batches_s": 80.0}],
            "ceiling": {"inserted_steps_s": 40_000.0, "batches_s": 30.0}}
    t_insert, t_sample = scaling_model.replay_costs(data)
    assert list(t_sample) == [512] and t_sample[512] == pytest.approx(1 / 80.0)
    assert 40_000.0 * t_insert + 30.0 * t_sample[512] == pytest.approx(1.0)


def test_an_input_of_the_wrong_kind_is_one_line(tmp_path: Path) -> None:
    argv = write_inputs(tmp_path, u1=40.0, u2=60.0, explorer=1000.0, t_insert=20e-6, t_sample32=2e-3)
    (tmp_path / "actor.json").write_text("{}")  # valid JSON, not what bench/actor.py writes
    with pytest.raises(SystemExit) as exc:
        scaling_model.main(argv)
    assert "explorer" in str(exc.value) and "\n" not in str(exc.value)
