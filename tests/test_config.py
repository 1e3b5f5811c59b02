"""Presets: classic mirrors train.py (keras-rl dqn_atari.py), apex scales with the fleet, tuned is apex with
the learning series' settings below 8 explorers, given flags win."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from config import Config, apply_preset, preset_table
from distributed import LaunchError, preflight
from flags import parse
from train import TrainConfig


def test_classic_preset_is_what_train_py_runs() -> None:
    cfg = apply_preset(Config(preset="classic", num_actors=3), given=set())
    keras_rl = TrainConfig()
    assert cfg.learning_rate == keras_rl.learning_rate and cfg.gamma == keras_rl.gamma
    assert cfg.huber_delta == keras_rl.delta_clip and cfg.batch_size == keras_rl.batch_size
    assert cfg.learning_starts == keras_rl.warmup and cfg.replay_capacity == keras_rl.memory_limit
    # one batch of 32 every 4 agent steps = 8 samples per insert; a target sync every 10,000 agent steps
    assert cfg.samples_per_insert == keras_rl.batch_size / keras_rl.train_interval
    assert cfg.target_update == keras_rl.target_update / keras_rl.train_interval
    assert (cfg.exploration, cfg.eps_start, cfg.eps_end, cfg.eps_anneal_steps) == (
        "anneal", keras_rl.eps_start, keras_rl.eps_end, keras_rl.eps_steps)
    assert (cfg.n_step, cfg.prioritized, cfg.dueling, cfg.double_dqn) == (1, False, keras_rl.dueling,
                                                                          keras_rl.double_dqn)
    assert cfg.grad_clip_norm == 0 and cfg.num_actors == 3


def test_apex_preset_scales_with_the_number_of_explorers() -> None:
    small = apply_preset(Config(preset="apex", num_actors=1), given=set())
    big = apply_preset(Config(preset="apex", num_actors=64), given=set())
    assert (small.batch_size, small.replay_capacity) == (32, 1_000_000)
    assert (big.batch_size, big.replay_capacity) == (512, 2_000_000)
    for cfg in (small, big):
        # keras-rl's plain Atari network: the file every keras-rl agent loads (issue 13)
        assert (cfg.n_step, cfg.prioritized, cfg.dueling, cfg.double_dqn, cfg.exploration) == (
            3, True, False, True, "ladder")
        assert (cfg.priority_alpha, cfg.priority_beta, cfg.grad_clip_norm) == (0.6, 0.4, 40.0)


def test_the_default_preset_is_apex_with_the_series_learner_settings_below_8_explorers() -> None:
    """launch.py with no flags gets the learning series' choice (docs/learning.md) on a small machine and
    exactly apex from 8 explorers on; the flags' own defaults (what --help shows) are the 1-explorer values."""
    assert Config().preset == "tuned"
    schedule = ("learning_rate_end", "learning_rate_anneal_steps", "priority_beta_anneal_steps")
    changed = {"batch_size", "samples_per_insert", "learning_rate", "learning_starts", *schedule}
    for n in (1, 7):
        tuned, apex, classic = (apply_preset(Config(preset=p, num_actors=n), given=set())
                                for p in ("tuned", "apex", "classic"))
        assert (tuned.batch_size, tuned.samples_per_insert, tuned.learning_rate, tuned.learning_starts) == (
            16, 4.0, 2.5e-4, 10_000)
        # the rate to 5e-5 and beta to 1 over the first 1M agent steps, then held: the series' budget-free anneal
        assert tuple(getattr(tuned, k) for k in schedule) == (5e-5, 1_000_000, 1_000_000)
        assert (apex.batch_size, apex.samples_per_insert, apex.learning_rate, apex.learning_starts) == (
            32, 8.0, 1e-4, 50_000)
        # Ape-X and dqn_atari.py keep a constant rate and beta over the whole run
        assert all(getattr(cfg, k) is None for cfg in (apex, classic) for k in schedule)
        # the rest is apex's, and an update still covers 4 agent steps (batch / ratio)
        assert {k: v for k, v in vars(tuned).items() if k not in changed | {"preset"}} == {
            k: v for k, v in vars(apex).items() if k not in changed | {"preset"}}
        assert tuned.batch_size / tuned.samples_per_insert == apex.batch_size / apex.samples_per_insert
    for n in (8, 64):
        tuned, apex = (apply_preset(Config(preset=p, num_actors=n), given=set()) for p in ("tuned", "apex"))
        assert dataclasses.replace(tuned, preset="apex") == apex
    defaults = apply_preset(Config(num_actors=1), given=set())
    assert all(getattr(defaults, k) == getattr(Config(), k) for k in changed)
    table = preset_table().splitlines()
    assert "tuned" in table[0] and "apex" in table[0]
    assert next(r for r in table if "--batch-size" in r).split()[1:] == ["16", "/", "512", "32", "/", "512", "32"]


def test_beta_anneals_to_one_over_the_steps_and_only_the_progress_counts_the_clock() -> None:
    cfg = Config(total_env_steps=10_000, learning_starts=2_000, samples_per_insert=8, batch_size=32)
    assert cfg.total_learner_steps == 2_000
    assert cfg.beta(0) == pytest.approx(0.4) and cfg.beta(1_000) == pytest.approx(0.7)
    assert cfg.beta(2_000) == cfg.beta(5_000) == pytest.approx(1.0)
    timed = dataclasses.replace(cfg, max_minutes=10)  # 600 s: whichever of the two ends first ends the anneal
    assert timed.progress(1_000, 0.0) == pytest.approx(0.5) and timed.progress(1_000, 450.0) == pytest.approx(0.75)
    assert timed.progress(0, 900.0) == pytest.approx(1.0)
    assert cfg.progress(1_000, 450.0) == pytest.approx(0.5)  # without --max-minutes the clock does not count
    assert timed.beta(1_000) == cfg.beta(1_000)  # a time budget leaves beta's schedule to the steps


def test_learning_rate_anneal_steps_ends_the_rates_anneal_early_and_leaves_beta_alone() -> None:
    cfg = Config(total_env_steps=10_000, learning_starts=2_000, samples_per_insert=8, batch_size=32,
                 learning_rate_end=0.0, learning_rate_anneal_steps=4_000)
    assert cfg.learner_steps_by(4_000) == 500 and cfg.total_learner_steps == 2_000
    assert cfg.rate_progress(250) == pytest.approx(0.5) and cfg.rate_progress(500) == cfg.rate_progress(1_500) == 1.0
    assert cfg.progress(250) == pytest.approx(0.125) and cfg.beta(250) == pytest.approx(0.475)  # beta: the run's
    unset = dataclasses.replace(cfg, learning_rate_anneal_steps=None)
    assert unset.rate_progress(250) == unset.progress(250) == pytest.approx(0.125)
    timed = dataclasses.replace(cfg, max_minutes=10)  # a schedule fixed in steps: the clock does not move it
    assert timed.rate_progress(250, 450.0) == cfg.rate_progress(250) == pytest.approx(0.5)
    assert timed.rate_progress(0, 900.0) == 0.0  # not even past the budget (the run stops there)
    assert dataclasses.replace(timed, learning_rate_anneal_steps=None).rate_progress(250, 450.0) == pytest.approx(
        0.75)  # without it the budget sets the anneal's length: here the clock's 0.75
    cfg.validate()
    with pytest.raises(ValueError, match="give --learning-rate-end too"):
        dataclasses.replace(cfg, learning_rate_end=None).validate()
    with pytest.raises(ValueError, match=r"must exceed --learning-starts \(2000\)"):
        dataclasses.replace(cfg, learning_rate_anneal_steps=2_000).validate()


def test_priority_beta_anneal_steps_brings_beta_to_one_early_and_leaves_the_rate_alone() -> None:
    cfg = Config(total_env_steps=10_000, learning_starts=2_000, samples_per_insert=8, batch_size=32,
                 learning_rate_end=0.0, priority_beta_anneal_steps=4_000)  # 500 of the run's 2,000 learner steps
    assert cfg.beta_progress(250) == pytest.approx(0.5) and cfg.beta(250) == pytest.approx(0.7)
    assert cfg.beta(500) == cfg.beta(1_500) == 1.0  # then it holds
    assert cfg.rate_progress(250) == cfg.progress(250) == pytest.approx(0.125)  # the rate: the run's
    longer = dataclasses.replace(cfg, total_env_steps=100_000)  # the run's length does not move it
    assert longer.beta(250) == cfg.beta(250)
    assert dataclasses.replace(cfg, total_env_steps=3_000).beta(250) == 1.0  # the run's end comes first
    timed = dataclasses.replace(cfg, max_minutes=10)
    assert timed.beta(250) == cfg.beta(250)  # nor the clock
    cfg.validate()
    dataclasses.replace(cfg, learning_rate_end=None, learning_rate_anneal_steps=None).validate()  # needs no other
    with pytest.raises(ValueError, match=r"--priority-beta-anneal-steps \(2000\) must exceed --learning-starts"):
        dataclasses.replace(cfg, priority_beta_anneal_steps=2_000).validate()


def test_flags_given_beside_a_preset_win_and_config_json_records_the_result(tmp_path: Path) -> None:
    argv = ["--preset", "classic", "--n-step", "3", "--learning-starts", "500", "--replay-capacity", "5000",
            "--total-env-steps", "3000", "--run-dir", str(tmp_path / "run")]
    cfg = parse(Config, argv, "")
    cfg, resume = preflight.prepare(cfg, argv)
    assert resume is None
    assert (cfg.n_step, cfg.learning_starts, cfg.replay_capacity) == (3, 500, 5000)  # given
    assert (cfg.exploration, cfg.prioritized, cfg.dueling, cfg.learning_rate) == ("anneal", False, False, 2.5e-4)
    assert "--n-step" in preset_table() and "classic" in preset_table()


def test_resuming_a_run_from_before_presets_and_anneals_keeps_its_setup(tmp_path: Path) -> None:
    """A config.json without the keys added since keeps what its run had: a plain 1-step network on uniform
    replay, a constant rate and beta over the whole run (not today's defaults)."""
    from distributed.checkpoint import save_checkpoint

    run = tmp_path / "old"
    run.mkdir()
    newer = ("preset", "n_step", "prioritized", "priority_alpha", "priority_beta", "dueling", "learning_rate_end",
             "learning_rate_anneal_steps", "priority_beta_anneal_steps")
    old = {k: v for k, v in json.loads(json.dumps(Config().__dict__)).items() if k not in newer}
    old.update(total_env_steps=3000, learning_starts=500, replay_capacity=5000, run_dir=str(run))
    (run / "config.json").write_text(json.dumps(old))
    save_checkpoint(run, {"online": [], "target": [], "optimizer": [], "steps": 0}, {"env_steps": 100})
    cfg, _ = preflight.resume_config(Config(resume=str(run)), ["--resume", str(run)])
    assert (cfg.dueling, cfg.n_step, cfg.prioritized) == (False, 1, False)
    assert (cfg.learning_rate_end, cfg.learning_rate_anneal_steps, cfg.priority_beta_anneal_steps) == (None,) * 3
    with pytest.raises(LaunchError, match="dueling"):
        preflight.resume_config(Config(resume=str(run), dueling=True), ["--resume", str(run), "--dueling", "true"])


def test_resume_refuses_a_preset_a_changed_saved_replay_and_a_replay_too_small_for_n_step(tmp_path: Path) -> None:
    from distributed.checkpoint import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    saved = apply_preset(Config(total_env_steps=3000, learning_starts=500, replay_capacity=5000, save_replay=True,
                                run_dir=str(run)), given={"learning_starts", "replay_capacity"})
    (run / "config.json").write_text(json.dumps(saved.__dict__))
    save_checkpoint(run, {"online": [], "target": [], "optimizer": [], "steps": 0}, {"env_steps": 100})

    def resume(*flags: str) -> Config:
        argv = ["--resume", str(run), *flags]
        return preflight.resume_config(parse(Config, argv, ""), argv)[0]

    assert resume("--n-step", "1").n_step == 1  # no saved replay yet: any n-step is fine
    with pytest.raises(LaunchError, match="--preset is for new runs"):
        resume("--preset", "classic")
    with pytest.raises(LaunchError, match="at least 15 transitions per emulator stream"):
        resume("--n-step", "10", "--num-actors", "50", "--envs-per-actor", "8")  # 5000 / 400 streams = 12.5
    (run / "replay.npz").write_bytes(b"saved replay")
    with pytest.raises(LaunchError, match="replay.npz.*--n-step"):
        resume("--n-step", "1")
    assert resume("--total-env-steps", "9000").total_env_steps == 9000  # other flags still change


def test_a_default_replay_shrinks_to_fit_memory_and_a_chosen_one_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """On a laptop-sized machine ``launch.py`` with no flags still runs: the default replay shrinks
    to what the free memory holds, on a 10,000 boundary; a capacity the user gave is never changed."""
    from replay.memory import ReplayMemory

    base = ["--num-actors", "1", "--run-dir", str(tmp_path / "run")]
    headroom = 1.5e9 + 0.8e9 * 2  # the learner's and one explorer's TensorFlow

    def prepared(available: float, argv: list[str]) -> Config:
        monkeypatch.setattr(preflight, "available_memory", lambda: int(available))
        return preflight.prepare(parse(Config, argv, ""), argv)[0]

    def need(capacity: int) -> float:
        return ReplayMemory.estimate_nbytes(capacity, 8, prioritized=True) + headroom

    assert prepared(30e9, base).replay_capacity == 1_000_000  # fits: unchanged, no note
    assert capsys.readouterr().out == ""
    cfg = prepared(6e9, base)  # the default (1M, prioritized) needs 7.1 GB + the actors'
    assert 100_000 <= cfg.replay_capacity < 1_000_000 and cfg.replay_capacity % 10_000 == 0
    assert need(cfg.replay_capacity) <= 6e9 < need(cfg.replay_capacity + 10_000)
    out = capsys.readouterr().out
    assert f"using --replay-capacity {cfg.replay_capacity:,}" in out and "give the flag to choose" in out
    with pytest.raises(LaunchError, match="use at most about"):
        prepared(6e9, [*base, "--replay-capacity", "1000000"])  # chosen: refused, not changed
    with pytest.raises(LaunchError, match="or fewer --num-actors"):
        prepared(3.5e9, base)  # not even 100,000 fit
    assert not (tmp_path / "run").exists()


def test_switches_need_no_value_and_help_gives_each_default_once() -> None:
    from flags import build_parser, parse

    assert parse(TrainConfig, ["--overwrite", "--dueling", "false"], "").overwrite is True  # a bare switch is on
    assert parse(TrainConfig, ["--overwrite", "false"], "").overwrite is False
    assert parse(Config, ["--dueling"], "").dueling is True
    text = " ".join(build_parser(Config, "").format_help().split())
    assert "(default: runs/<game>-<time>)" in text and "(default: runs/<game>-<time>) (default" not in text
    assert "(default: CPU cores - 1) [1..4096]" in text and "[1..4096] (default" not in text
    assert "512 at most) [1..8192] (default: 16)" in text  # flags without their own default note still get one


def test_settings_are_grouped_as_algorithm_and_deployment_in_the_object_and_in_help() -> None:
    """Every flag sits in exactly one --help group, the class declares them in that order, and the
    deployment groups hold what says where a run executes, never how it learns."""
    import dataclasses

    from flags import build_parser

    grouped = [name for names in Config.GROUPS.values() for name in names]
    assert grouped == [f.name for f in dataclasses.fields(Config)]  # each once, in declaration order
    assert all(title.split(":")[0] in ("algorithm", "deployment") for title in Config.GROUPS)
    deployment = Config().settings("deployment")
    assert {"address", "run_dir", "learner_threads", "explorer_resource", "num_cpus"} <= set(deployment)
    assert not {"gamma", "n_step", "batch_size", "target_update"} & set(deployment)
    assert set(deployment) | set(Config().settings("algorithm")) == set(grouped)
    help_text = build_parser(Config, "").format_help()
    for title in Config.GROUPS:
        assert f"\n{title}:\n" in help_text
    with pytest.raises(ValueError, match="algorithm or deployment"):
        Config().settings("other")


def test_train_py_never_writes_into_a_folder_with_a_weights_checkpoint_old_or_new(tmp_path: Path) -> None:
    """train.py's periodic weights are checkpoint-weights.h5 now; runs before the rename wrote
    checkpoint.h5, and their folders are still refused as run folders."""
    import train

    for name in (train.CHECKPOINT, train.OLD_CHECKPOINT):
        run = tmp_path / name.replace(".", "-")
        run.mkdir()
        (run / name).write_bytes(b"")
        cfg = TrainConfig(run_dir=str(run), output=str(tmp_path / "out.h5"))
        with pytest.raises(ValueError, match="already holds a run"):
            cfg.prepare()


@pytest.mark.parametrize("text", ["5,3", "0,1", "-1", "x", "5,,10", "nan", "inf"])
def test_snapshot_minutes_must_be_increasing_positive_minutes(text: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(Config, ["--snapshot-minutes", text], "", prog="launch.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("launch.py: error: --snapshot-minutes")


def test_snapshot_minutes_parse_to_points() -> None:
    assert parse(Config, ["--snapshot-minutes", "0.5, 1,20"], "").snapshot_points == (0.5, 1.0, 20.0)
    assert Config().snapshot_points == () and parse(Config, ["--snapshot-minutes", ""], "").snapshot_points == ()
