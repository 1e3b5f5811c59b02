"""Failures that bend data or stall a run (issue 15): a failing or restarted replay seen by the
learner, restarted explorers' seeds, the scores around a lost life, beta and weights versions
across restores, the replay's memory on resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from config import Config
from core.atari import make_env
from replay.server import ReplayServer

ROOT = Path(__file__).resolve().parents[1]


def _by_value() -> None:
    """Ray workers cannot import this test module: ship its classes by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _pid(ray, actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _kill_and_wait_restart(ray, actor) -> None:
    """SIGKILL the actor's process; return once Ray has restarted it and it answers."""
    pid = _pid(ray, actor)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if _pid(ray, actor) != pid:
                return
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            time.sleep(0.2)
    raise AssertionError("the actor did not come back")


def _fill(ray, replay, rng: np.random.Generator, n: int = 300, priority: np.ndarray | None = None) -> None:
    ray.get(replay.add_chunks.remote([{
        "stream": 0, "frames": rng.integers(0, 255, (n, 84, 84), dtype=np.uint8),
        "actions": rng.integers(0, 4, n).astype(np.uint8), "rewards": rng.random(n).astype(np.float32),
        "terminals": rng.random(n) < 0.02, "new_segment": True,
        "priorities": np.full(n, 1000.0, np.float32) if priority is None else priority}]))


# --- the learner and a failing replay (item 2) ---------------------------------------------------
class FailingReplay(ReplayServer):
    """The real replay; its first sample call returns 2 batches, every later one raises."""

    calls = 0

    def sample_packed(self, batch_size, num_batches=1, beta=0.4):
        self.calls += 1
        if self.calls > 1:
            raise ValueError("sampling is broken here")
        return super().sample_packed(batch_size, 2, beta)


def test_an_error_inside_replay_sampling_stops_the_learner_with_its_cause(ray_session) -> None:
    """Not a lost replay: the call raises, saying what failed, and the priorities computed so far
    reach the replay (they used to be dropped, and the driver re-issued the call forever)."""
    from learner.learner import Learner

    ray = ray_session
    _by_value()
    replay = ray.remote(num_cpus=0)(FailingReplay).remote(400, 1, seed=0, n_step=1, priority_alpha=1.0)
    _fill(ray, replay, np.random.default_rng(1))
    learner = Learner(Config(batch_size=16, prioritized=True, priority_alpha=1.0), n_actions=4, replay=replay)
    try:
        before = ray.get(replay.priorities.remote(np.arange(300)))
        with pytest.raises(Exception, match=r"the replay failed to sample a batch \(ValueError: sampling is broken "
                                            r"here\)") as raised:
            learner.train(8)
        ray.get(replay.size.remote())  # calls from one caller run in order: the priorities have landed
        after = ray.get(replay.priorities.remote(np.arange(300)))
    finally:
        ray.kill(replay)
    assert type(raised.value).__name__ == "ReplaySampleError" and learner.steps == 2
    assert 1 <= (after != before).sum() <= 32, "the two trained batches' priorities were sent"


def test_a_replay_with_nothing_to_draw_yet_is_waited_for_then_named(ray_session, monkeypatch) -> None:
    """The driver counts an explorer run's steps when the run ends; its pushes land a moment later.
    A learner call that finds the replay still empty waits for them (that was taken for a broken
    replay and stopped a resumed run); a replay that stays empty is named after a while."""
    import threading

    import learner.learner as learner_module
    from learner.learner import Learner

    ray = ray_session
    replay = ray.remote(num_cpus=0)(ReplayServer).remote(400, 1, seed=0, n_step=1, priority_alpha=1.0)
    cfg = Config(batch_size=16, prioritized=True, priority_alpha=1.0)
    filler = threading.Timer(1.0, _fill, (ray, replay, np.random.default_rng(5)))
    try:
        monkeypatch.setattr(learner_module, "NOTHING_TO_SAMPLE_SECONDS", 0.5)
        with pytest.raises(Exception, match=r"the replay had no transition to sample for 0 s") as raised:
            Learner(cfg, n_actions=4, replay=replay).train(4)
        assert type(raised.value).__name__ == "ReplaySampleError"
        monkeypatch.setattr(learner_module, "NOTHING_TO_SAMPLE_SECONDS", 60.0)
        filler.start()
        result = Learner(cfg, n_actions=4, replay=replay).train(4)
    finally:
        filler.cancel()
        ray.kill(replay)
    assert result["updates"] == 4 and not result["replay_lost"]


# --- the learner and a restarted replay (item 4) -------------------------------------------------
class HandingReplay(ReplayServer):
    """The real replay, remembering every position it handed out in a batch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.handed: set[int] = set()

    def sample_packed(self, batch_size, num_batches=1, beta=0.4):
        batches = super().sample_packed(batch_size, num_batches, beta)
        for b in batches:
            self.handed.update(int(i) for i in b.indices)
        return batches

    def handed_out(self) -> list[int]:
        return sorted(self.handed)


@pytest.mark.parametrize("driver_knows", [False, True])
def test_batches_and_priorities_of_a_dead_replay_never_reach_its_successor(ray_session, driver_knows) -> None:
    """The learner's prefetched batches come from a replay that then dies and restarts (and refills
    to the same keys). Their priorities must not land on the new replay's entries; when the driver
    passes the new replay's instance, they are not even trained on."""
    from learner.learner import Learner

    ray = ray_session
    _by_value()
    rng = np.random.default_rng(4)
    replay = ray.remote(num_cpus=0, max_restarts=1)(HandingReplay).remote(400, 1, seed=0, priority_alpha=1.0)
    _fill(ray, replay, rng)
    learner = Learner(Config(batch_size=16, prioritized=True, priority_alpha=1.0), n_actions=4, replay=replay)
    try:
        learner.train(4)
        ray.wait(list(learner._requests), num_returns=len(learner._requests))  # prefetched and held
        old_instance = ray.get(replay.status.remote())[0]
        _kill_and_wait_restart(ray, replay)
        instance = ray.get(replay.status.remote())[0]
        assert instance != old_instance
        # the refill: the same 300 keys, but only the first 100 entries likely to be drawn
        _fill(ray, replay, rng, priority=np.r_[np.full(100, 1000.0), np.full(200, 1e-3)].astype(np.float32))
        before = ray.get(replay.priorities.remote(np.arange(300)))
        results = [learner.train(8, instance) if driver_knows else learner.train(8) for _ in range(3)]
        ray.get(replay.size.remote())
        after = ray.get(replay.priorities.remote(np.arange(300)))
        handed = set(ray.get(replay.handed_out.remote()))
    finally:
        ray.kill(replay)
    changed = set(np.flatnonzero(after != before).tolist())
    assert changed and changed <= handed, f"stale priorities landed on {sorted(changed - handed)[:10]}"
    if driver_knows:
        assert [r["updates"] for r in results] == [8, 8, 8] and not any(r["replay_lost"] for r in results)
    else:  # the old replay's held batches are trained, then its successor's instance is noticed
        assert [r["replay_lost"] for r in results] == [False, True, False] and results[-1]["updates"] == 8
    assert learner.replay_instance == instance


def _frames_with_ids(n: int, start: int = 1) -> np.ndarray:
    frames = np.zeros((n, 84, 84), np.uint8)
    frames[:, 0, 0] = np.arange(start, start + n)
    return frames


def test_a_restarted_replay_never_zero_fills_a_stack_mid_episode() -> None:
    """Ray restarts the replay empty while an explorer is mid-episode: the explorer's next chunk
    continues its episode (no new_segment). Entries whose stacks would need the lost frames are
    not transitions until the stream's next episode starts; an explorer's own first chunk
    (new_segment) is sampleable from its first entry, zero-filled as at any episode start."""
    n = 40
    terminals = np.zeros(n, bool)
    terminals[20] = True  # entry 21 is its terminal observation, entry 22 starts the next episode
    chunk = {"stream": 0, "frames": _frames_with_ids(n), "actions": np.zeros(n, np.uint8),
             "rewards": np.zeros(n, np.float32), "terminals": terminals}
    restarted = ReplayServer(400, 2, seed=0)
    restarted.add_chunks([dict(chunk, new_segment=False)])
    valid = restarted.memory.valid(np.arange(n))
    assert not valid[:22].any(), "entries of the episode the replay never saw the start of"
    assert valid[22:n - 1].all()
    batch = restarted.memory.gather(np.arange(22, n - 1))
    ids = batch.state0[:, :, 0, 0]
    assert (ids[:, -1] == np.arange(23, n)).all()
    zero = ids == 0
    assert not zero[3:].any() and zero[0, :3].all(), "zero frames only before the episode start"

    fresh = ReplayServer(400, 2, seed=0)
    fresh.add_chunks([dict(chunk, new_segment=True)])
    assert fresh.memory.valid(np.arange(n))[:20].all()


# --- explorers restarted by Ray (item 5) ----------------------------------------------------------
def test_an_explorer_restarted_after_a_crash_plays_new_games(ray_session) -> None:
    from actors.explorer import Explorer

    ray = ray_session
    cfg = Config(num_actors=1, envs_per_actor=1, explorer_priority="normal")
    replay = ray.remote(num_cpus=0)(ReplayServer).remote(1000, 1, seed=0)
    explorer = ray.remote(num_cpus=0, max_restarts=2)(Explorer).remote(cfg, 0, replay, 0)
    def draws(explorer) -> tuple:
        """What the seeds decide: keras-rl's epsilon draws (np.random) and the emulator's start."""
        def look(self) -> tuple:
            import numpy

            return tuple(numpy.random.get_state()[1][:4]), self.streams[0].env.ale.getRAM().tobytes()

        return ray.get(explorer.__ray_call__.remote(look))

    try:
        first = draws(explorer)
        _kill_and_wait_restart(ray, explorer)
        again = draws(explorer)
        _kill_and_wait_restart(ray, explorer)
        third = draws(explorer)
    finally:
        ray.kill(explorer)
        ray.kill(replay)
    assert len({first[0], again[0], third[0]}) == 3, "each restart draws its own epsilon-greedy choices"
    assert len({first[1], again[1], third[1]}) >= 2, "and starts its games elsewhere (1 in 30 no-op counts match)"


# --- scores around a lost life (item 6) -----------------------------------------------------------
def _ram_score(env) -> int:
    """Breakout's own score counter (two BCD bytes of its RAM)."""
    ram = env.ale.getRAM()
    x, y = int(ram[77]), int(ram[76])
    return (x & 15) + 10 * (x >> 4) + 100 * (y & 15)


def _to_life_loss(env, rng: np.random.Generator) -> dict:
    for _ in range(5000):
        _, _, terminated, _, info = env.step(int(rng.integers(4)))
        if terminated:
            return info
    raise AssertionError("no life lost in 5000 random steps")


def test_points_scored_in_the_steps_after_a_lost_life_count() -> None:
    """Points that the emulator scores during the no-op/FIRE steps after a lost life are in the
    reported game score: it equals the game's own score counter."""
    env = make_env("Breakout", training=True, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    info = _to_life_loss(env, rng)
    assert info["lives"] == 4 and not env.ale.game_over()
    bumped = _ram_score(env) + 7  # the emulator adds 7 points on its next frame, inside reset()
    env.ale.setRAM(77, bumped % 10 | (bumped // 10 % 10) << 4)
    env.reset()
    while "game_score" not in info:
        _, _, terminated, _, info = env.step(int(rng.integers(4)))
        if terminated and "game_score" not in info:
            env.reset()
    assert info["game_score"] == _ram_score(env) >= 7


def test_a_game_that_ends_in_the_steps_after_a_lost_life_is_reported_not_merged() -> None:
    env = make_env("Breakout", training=True, seed=1)
    env.reset()
    rng = np.random.default_rng(1)
    _to_life_loss(env, rng)
    score = _ram_score(env)
    env.ale.setRAM(57, 0)  # no lives left: the game ends on the emulator's next frame, inside reset()
    _, info = env.reset()
    assert info["game_score"] == score, "the game that ended is reported by reset()"
    assert info["lives"] == 5 and not env.ale.game_over(), "and a new game began"
    info = {}
    while "game_score" not in info:
        _, _, terminated, _, info = env.step(int(rng.integers(4)))
        if terminated and "game_score" not in info:
            env.reset()
    assert info["game_score"] == _ram_score(env), "the next game's score is its own"


# --- beta and weights versions across restores (item 7) -------------------------------------------
class BetaReplay(ReplayServer):
    """The real replay, remembering the beta of every sample call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.betas: list[float] = []

    def sample_packed(self, batch_size, num_batches=1, beta=0.4):
        self.betas.append(beta)
        return super().sample_packed(batch_size, num_batches, beta)

    def seen(self) -> list[float]:
        return self.betas


def test_beta_goes_on_from_where_it_was_after_a_resume_with_more_steps(ray_session) -> None:
    """A resume with a larger --total-env-steps anneals beta on from the value it reached (it used
    to drop, 0.88 -> 0.45 here)."""
    from learner.learner import Learner

    ray = ray_session
    _by_value()
    short = Config(total_env_steps=8_000, learning_starts=0, batch_size=16, samples_per_insert=2,
                   prioritized=True, priority_alpha=1.0, priority_beta=0.4)  # 1,000 learner steps
    first = Learner(short, n_actions=4)
    first.steps, first.weights_version = 800, 40
    state = first.get_state()
    replay = ray.remote(num_cpus=0)(BetaReplay).remote(400, 1, seed=0, priority_alpha=1.0)
    _fill(ray, replay, np.random.default_rng(7))
    longer = Config(**{**short.__dict__, "total_env_steps": 80_000})
    second = Learner(longer, n_actions=4, replay=replay)
    try:
        second.set_state(state)
        second.train(12)
        betas = ray.get(replay.seen.remote())
    finally:
        ray.kill(replay)
    assert betas[0] == pytest.approx(0.88) and betas == sorted(betas) and betas[-1] < 0.881


def test_a_restored_learner_hands_out_versions_past_every_one_seen() -> None:
    """The driver restores a restarted learner from a checkpoint of version 40 after handing out
    version 57: had the versions restarted at 40, an explorer holding 57 would skip new weights
    numbered 57 (it loads weights only when the version differs)."""
    from learner.learner import Learner

    cfg = Config(batch_size=16)
    first = Learner(cfg, n_actions=4)
    first.weights_version = 40
    second = Learner(cfg, n_actions=4)
    second.set_state(first.get_state(), min_version=58)
    assert second.get_weights()[0] == 58
    second.set_state(first.get_state(), min_version=12)  # seen nothing past the checkpoint: its own
    assert second.get_weights()[0] == 40
    second.versions_from(30)  # a lower floor never takes the versions back
    assert second.get_weights()[0] == 40


# --- resuming with a saved replay (item 3) -------------------------------------------------------
REPLAY_SCRIPT = """
import hashlib, json, sys
import numpy as np
from replay.server import ReplayServer

def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024

what, capacity, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = ReplayServer(capacity, 2, seed=0)
if what == 'save':
    rng = np.random.default_rng(0)
    for i in range(capacity // 1000):
        server.add_chunks([{'stream': s, 'frames': rng.integers(0, 255, (500, 84, 84), dtype=np.uint8),
                            'actions': np.zeros(500, np.uint8), 'rewards': np.zeros(500, np.float32),
                            'terminals': np.zeros(500, bool), 'new_segment': i == 0} for s in range(2)])
    server.save(path)
    before = 0
else:
    before = peak()
    server.load(path)
print(json.dumps({'size': server.size(), 'grew': peak() - before, 'frames': server.memory._frames.nbytes,
                  'digest': hashlib.sha256(server.memory._frames).hexdigest()}))
"""


def test_a_saved_replay_loads_into_the_memory_it_fills_not_beside_it(tmp_path: Path) -> None:
    """Loading replay.npz used to read every array whole and then copy it into the preallocated
    ring: twice the frames at the peak (14 GB for a 1M replay, budgeted once by launch.py)."""
    import json

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = tmp_path / "replay_io.py"
    script.write_text(REPLAY_SCRIPT)
    path, capacity = tmp_path / "replay.npz", 30_000

    def run(what: str) -> dict:
        out = subprocess.run([sys.executable, str(script), what, str(capacity), str(path)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    saved, loaded = run("save"), run("load")
    assert loaded["size"] == saved["size"] == capacity and loaded["digest"] == saved["digest"]
    assert loaded["frames"] > 200e6
    assert loaded["grew"] < 1.15 * loaded["frames"], f"loading took {loaded['grew'] / loaded['frames']:.2f}x the frames"


def _small_replay_file(path: Path, tag: dict | None = None) -> ReplayServer:
    rng = np.random.default_rng(3)
    server = ReplayServer(200, 2, seed=0)
    server.add_chunks([{"stream": s, "frames": rng.integers(0, 255, (60, 84, 84), dtype=np.uint8),
                        "actions": np.zeros(60, np.uint8), "rewards": np.zeros(60, np.float32),
                        "terminals": np.zeros(60, bool), "new_segment": True} for s in range(2)])
    server.save(str(path), tag) if tag is not None else server.save(str(path))
    return server


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _untouched(server: ReplayServer) -> bool:
    return server.size() == 0 and not server.memory._frames.any()


def test_a_saved_replay_of_another_shape_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "replay.npz"
    server = _small_replay_file(path)
    on_disk = _files(tmp_path)
    other = ReplayServer(400, 2, seed=0)
    with pytest.raises(ValueError, match="saved replay has shape"):
        other.load(str(path))
    assert _untouched(other) and _files(tmp_path) == on_disk
    again = ReplayServer(200, 2, seed=0)
    assert again.load(str(path)) == 120
    assert np.array_equal(again.memory._frames, server.memory._frames)


def test_a_saved_replay_cut_short_changes_nothing(tmp_path: Path) -> None:
    """Two ways a replay.npz is short: the file cut (its zip directory, at the end, is gone: the zip
    reader refuses it before anything is read), and a whole zip whose frames member ends early
    (the frames are read in place into the memory: the reader notices the end and the memory's
    frames are zeroed again). Neither leaves anything in the memory or changes a file."""
    import zipfile

    path = tmp_path / "replay.npz"
    _small_replay_file(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    short = tmp_path / "short.npz"
    with zipfile.ZipFile(path) as whole, zipfile.ZipFile(short, "w") as out:
        for name in whole.namelist():
            member = whole.read(name)
            out.writestr(name, member[: len(member) // 2] if name == "frames.npy" else member)
    on_disk = _files(tmp_path)
    server = ReplayServer(200, 2, seed=0)
    with pytest.raises(zipfile.BadZipFile):
        server.load(str(cut))
    assert _untouched(server)
    whole = f"{server.memory._frames.nbytes:,}"
    with pytest.raises(ValueError, match=rf"saved frames end after [\d,]+ of {whole} bytes: the file is truncated"):
        server.load(str(short))
    assert _untouched(server) and _files(tmp_path) == on_disk


# --- replay.npz and checkpoint.npz: one pair, whatever the crash (issue 20) -------------------------
def test_a_resume_uses_only_the_saved_replay_of_its_own_checkpoint(tmp_path: Path) -> None:
    """Real saves, laid out as each crash leaves them: after the checkpoint but before the rename
    (the rename is finished), and a replay of another checkpoint or of none (one line; refill)."""
    from distributed.checkpoint import REPLAY_FILE, REPLAY_PENDING, replay_tag, saved_replay
    from replay.npz_io import read_tag

    old, new = replay_tag(16, 500), replay_tag(32, 700)
    _small_replay_file(tmp_path / REPLAY_FILE, old)
    _small_replay_file(tmp_path / REPLAY_PENDING, new)
    on_disk = _files(tmp_path)
    assert saved_replay(tmp_path, old) == (tmp_path / REPLAY_FILE, "")  # the crash came before the checkpoint
    assert _files(tmp_path) == on_disk
    path, why = saved_replay(tmp_path, new)  # after it: the rename is finished
    assert path == tmp_path / REPLAY_FILE and why == "" and read_tag(str(path)) == new
    assert not (tmp_path / REPLAY_PENDING).exists()
    on_disk = _files(tmp_path)
    assert saved_replay(tmp_path, old) == (None, "replay.npz belongs to the checkpoint of learner step 32, agent step "
                                                 "700, not to checkpoint.npz (learner step 16, agent step 500)")
    _small_replay_file(tmp_path / REPLAY_FILE)  # a save from before tags
    assert saved_replay(tmp_path, new) == (None, "replay.npz belongs to no checkpoint (it carries no tag), not to "
                                                 "checkpoint.npz (learner step 32, agent step 700)")
    (tmp_path / REPLAY_FILE).write_bytes(on_disk[REPLAY_FILE][:1000])
    path, why = saved_replay(tmp_path, new)
    assert path is None and why.startswith("replay.npz is unreadable (BadZipFile")


CRASH_SCRIPT = """
import os, signal, sys
import distributed.driver as driver
import launch

real, calls = driver.save_checkpoint, []

def save_checkpoint(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint: its replay has been written, the checkpoint not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

driver.save_checkpoint = save_checkpoint
sys.exit(launch.main(sys.argv[1:]))
"""


def test_a_crash_between_the_replay_and_the_checkpoint_resumes_with_the_checkpoints_own_replay(
        ray_address: str, tmp_path: Path) -> None:
    """launch.py is SIGKILLed after it saved the second checkpoint's replay and before it wrote that
    checkpoint: the resume loads the first checkpoint's replay (it used to load the newer one, and
    the learner then sampled transitions its checkpoint had never seen)."""
    import kerasrl_compat
    from distributed.checkpoint import load_checkpoint

    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token", **kerasrl_compat.PROCESS_ENV)
    script, run = tmp_path / "crash.py", tmp_path / "run"
    script.write_text(CRASH_SCRIPT)
    argv = ["--num-actors", "1", "--envs-per-actor", "2", "--learning-starts", "300", "--replay-capacity", "3000",
            "--samples-per-insert", "2", "--batch-size", "32",
            "--checkpoint-every", "16", "--export-every", "1000", "--log-every", "1",
            "--total-env-steps", "1500", "--save-replay", "--eval-every", "0", "--address", ray_address]
    crashed = subprocess.run([sys.executable, str(script), *argv, "--run-dir", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-2000:] + crashed.stderr[-3000:]
    learner_state, _ = load_checkpoint(run)
    resumed = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--resume", str(run), "--address", ray_address],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert (f"saved with the checkpoint of learner step {learner_state['steps']:,}\n" in resumed.stdout), \
        resumed.stdout[-3000:]
    from replay.npz_io import read_tag

    assert read_tag(str(run / "replay.npz")) == load_checkpoint(run)[1]["replay_tag"]
    assert not (run / "replay-pending.npz").exists()


# --- a learner killed mid-run (item 8) and a full disk (item 1) ----------------------------------
def test_a_killed_learner_restores_its_checkpoint_and_keeps_the_replay_ratio(ray_session, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    """SIGKILL the learner actor mid-run: Ray restarts it, the driver restores the last checkpoint
    into it (the --resume path), and the learner goes on at the replay ratio: the updates lost
    since the checkpoint are not redone back to back on the replay as it is (they used to be)."""
    import json
    import re

    from procs import run_and_kill


    total, starts, spi, batch = 3000, 400, 1, 32
    argv = ["--num-actors", "1", "--envs-per-actor", "2", "--total-env-steps", str(total), "--learning-starts",
            str(starts), "--replay-capacity", "4000", "--samples-per-insert", str(spi), "--batch-size", str(batch),
            "--updates-per-call", "4",
            "--checkpoint-every", "16", "--export-every", "1000", "--log-every", "0.3"]
    run_dir = tmp_path / "run"
    # once learner step 24 is logged: past the first checkpoint (16)
    killed = run_and_kill(run_dir, argv, "ray::Learner", lambda r: r["learner_steps"] >= 24)
    out = capsys.readouterr().out
    assert killed, "the learner was never killed"
    found = re.search(r"the learner failed \(1 time\(s\)\); restarted from the last checkpoint at learner step "
                      r"(\d+) \((\d+) learner steps lost\)", out)
    assert found, out[-3000:]
    restored, lost = int(found[1]), int(found[2])
    assert restored >= 16 and restored % 4 == 0
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["learner_restarts"] == 1 and records[-1]["env_steps"] == total
    ratio = (total - starts) * spi // batch
    assert records[-1]["learner_steps"] == ratio - lost, "the lost updates are not made up on an unchanged replay"
    assert "explorer 0 failed" not in out, "the explorer was fine: only weights from the dead learner failed"
    assert records[-1]["explorer_restarts"] == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 20 MB filesystem (tmpfs), made and removed by the test: room for policy.h5 (6.8 MB)
    and its replacement, not for checkpoint.npz (27 MB)."""
    folder = tmp_path / "small"
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_says_what_is_whole_and_leaves_no_partial_file(ray_address: str, small_disk: Path) -> None:
    """Every checkpoint.npz is too big for the disk: each periodic one fails with one line and the
    training goes on; at the end, after the final policy.h5, the failed checkpoint is one line on
    stderr naming the files that are whole and their learner steps, exit status 1. No traceback,
    no temporary file left, and policy.h5 is whole."""
    import json

    from core.policy_file import read_weight_shapes

    run = small_disk / "run"
    import kerasrl_compat

    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token", **kerasrl_compat.PROCESS_ENV)
    argv = ["--num-actors", "1", "--envs-per-actor", "2", "--learning-starts", "300", "--replay-capacity", "3000",
            "--samples-per-insert", "2", "--batch-size", "32",
            "--log-every", "1", "--total-env-steps", "1500", "--checkpoint-every", "20",
            "--export-every", "20", "--address", ray_address, "--run-dir", str(run)]
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    out, err = proc.stdout, proc.stderr.strip().splitlines()
    assert proc.returncode == 1, out[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in out + proc.stderr
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["env_steps"] == 1500 and last["learner_steps"] == (1500 - 300) * 2 // 32, "training went on"
    mid_run = [line for line in out.splitlines() if line.startswith("could not write checkpoint.npz")]
    assert mid_run and all("No space left on device" in line and "training goes on" in line for line in mid_run)
    assert len(err) == 1, err
    assert err[0].startswith(f"launch.py: error: could not write checkpoint.npz in {run} (No space left on device); "
                             f"whole on disk: policy.h5 (learner step {last['learner_steps']:,})"), err[0]
    assert "there is no checkpoint to resume from" in err[0] and f"free space in {run}" in err[0]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [], "a temporary file was left"
    assert not (run / "checkpoint.npz").exists()
    assert len(read_weight_shapes(run / "policy.h5")) == 10
