"""What of the GPU learner can be checked without a GPU (docs/gpu.md): the GPU lock against the main
one, ./dqn's choice of when to install it, what ``--learner-precision auto`` picks on any GPU, and
that no actor but a GPU learner can see a GPU."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from procs import run_with_private_ray

import kerasrl_compat
from config import Config
from core.network import auto_precision

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["bash", "cat", "cut", "dirname", "flock", "ln", "rm", "sed", "sha256sum"]


def pins(path: Path) -> dict[str, str]:
    """name (normalised) -> version of every ``name==version`` line."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


# --- the lock --------------------------------------------------------------------------------------
def test_gpu_lock_is_the_main_lock_plus_what_and_cuda_needs() -> None:
    """Same pin for every package both name, every main pin present, and the rest exactly the
    packages of tensorflow's ``and-cuda`` extra, each within the range tensorflow asks for."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    main, gpu = pins(ROOT / "requirements.lock.txt"), pins(ROOT / "requirements-gpu.lock.txt")
    assert {n: gpu.get(n) for n in main} == main
    extra = {n: v for n, v in gpu.items() if n not in main}
    and_cuda = [r for r in map(Requirement, requires("tensorflow") or [])
                if r.marker and r.marker.evaluate({"extra": "and-cuda"}) and not r.marker.evaluate({"extra": ""})]
    assert and_cuda, "tensorflow declares no and-cuda extra: is this TensorFlow's own wheel?"
    assert set(extra) == {re.sub(r"[-_.]+", "-", r.name).lower() for r in and_cuda}
    for r in and_cuda:
        assert r.specifier.contains(extra[re.sub(r"[-_.]+", "-", r.name).lower()]), r


# --- ./dqn: when the GPU extra is installed ----------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of ./dqn beside a one-package main lock and a GPU lock of one more package, and a PATH
    of the tools it needs only."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "dqn", proj / "dqn")
    (proj / "requirements.lock.txt").write_text("six==1.17.0\n")
    (proj / "requirements-gpu.lock.txt").write_text("six==1.17.0\nmdurl==0.1.2\n")
    (tmp_path / "bin").mkdir()
    for tool in TOOLS:
        (tmp_path / "bin" / tool).symlink_to(shutil.which(tool))
    return proj


def dqn(project: Path, *args: str, gpu: str | None = None, venv: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "DQN_VENV", "DQN_GPU")}
    env["PATH"] = str(project.parent / "bin")
    env["PYTHON"] = sys.executable
    if gpu is not None:
        env["DQN_GPU"] = gpu
    if venv:
        env["DQN_VENV"] = venv
    return subprocess.run(["bash", str(project / "dqn"), *args], env=env, capture_output=True, text=True,
                          timeout=300)


HAS_MDURL = "import importlib.util as u; print(u.find_spec('mdurl') is not None)"


def test_the_gpu_extra_is_added_when_asked_kept_and_never_given_unasked(project: Path) -> None:
    venv = project / ".venv"
    base = dqn(project, "python", "-c", HAS_MDURL)
    assert base.returncode == 0, base.stderr
    assert base.stdout.strip() == "False" and "setting up" in base.stderr and "CUDA" not in base.stderr
    assert not (venv / ".dqn-gpu-stamp").exists()
    python_inode = (venv / "bin" / "python").lstat().st_ino

    # what the nvidia-*-cu12 wheels lay out, so that the library links can be checked
    site = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                         "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip())
    (site / "nvidia" / "cudnn" / "lib").mkdir(parents=True)
    (site / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9").write_bytes(b"")
    (site / "tensorflow").mkdir()

    bad = dqn(project, "python", "-c", HAS_MDURL, gpu="yes")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("dqn: error: DQN_GPU=yes")

    topped = dqn(project, "python", "-c", HAS_MDURL, gpu="1")
    assert topped.returncode == 0, topped.stderr
    assert topped.stdout.strip() == "True"
    assert "adding TensorFlow's CUDA libraries" in topped.stderr and "setting up" not in topped.stderr  # no rebuild
    assert (venv / "bin" / "python").lstat().st_ino == python_inode
    gpu_lock = project / "requirements-gpu.lock.txt"
    assert (venv / ".dqn-gpu-stamp").read_text().strip() == hashlib.sha256(gpu_lock.read_bytes()).hexdigest()
    link = site / "tensorflow" / "libcudnn.so.9"
    assert os.readlink(link) == "../nvidia/cudnn/lib/libcudnn.so.9" and link.resolve().is_file()

    kept = dqn(project, "python", "-c", HAS_MDURL)  # without DQN_GPU: kept, and nothing to do
    assert (kept.returncode, kept.stdout.strip(), kept.stderr) == (0, "True", "")

    gpu_lock.write_text(gpu_lock.read_text() + "# re-resolved\n")  # a venv with the extra follows its lock
    followed = dqn(project, "python", "-c", HAS_MDURL)
    assert followed.returncode == 0 and "adding TensorFlow's CUDA libraries" in followed.stderr
    assert "setting up" not in followed.stderr

    other = project.parent / "other-venv"  # a venv built without DQN_GPU never gets the extra
    fresh = dqn(project, "python", "-c", HAS_MDURL, venv=str(other))
    assert fresh.returncode == 0 and fresh.stdout.strip() == "False" and "CUDA" not in fresh.stderr
    assert not (other / ".dqn-gpu-stamp").exists()


# --- precision for a GPU ------------------------------------------------------------------------------
@pytest.mark.parametrize("gpu, flags, expected", [
    (None, {"avx2", "fma"}, ("float32", "no native bfloat16 here")),
    (None, {"avx512f", "avx512_bf16"}, ("bfloat16", "CPU avx512_bf16")),
    (None, {"avx512_bf16", "amx_bf16"}, ("bfloat16", "CPU amx_bf16")),
    ((7, 0), {"avx2"}, ("float32", "GPU compute capability 7.0")),  # V100: no TF32
    ((7, 5), {"avx2"}, ("float32", "GPU compute capability 7.5")),  # T4
    ((8, 0), {"avx2"}, ("float32", "GPU compute capability 8.0, TF32 tensor cores")),  # A100
    ((8, 6), {"amx_bf16"}, ("float32", "GPU compute capability 8.6, TF32 tensor cores")),  # the GPU decides
    ((9, 0), {"avx512_bf16"}, ("float32", "GPU compute capability 9.0, TF32 tensor cores")),  # H100
])
def test_auto_precision_for_any_gpu(gpu: tuple[int, int] | None, flags: set[str], expected: tuple[str, str]) -> None:
    """float32 on every GPU (TF32 from Ampere on; policy.h5 float32 either way), bf16 only on CPUs
    that multiply it natively."""
    assert auto_precision(gpu, flags) == expected


# --- no GPU for the actors that hold none ----------------------------------------------------------------
def test_only_a_gpu_learner_may_see_a_gpu() -> None:
    from distributed.topology import learner_env

    assert learner_env(Config(), 3) == {"TF_NUM_INTRAOP_THREADS": "3", "CUDA_VISIBLE_DEVICES": ""}
    assert learner_env(Config(learner_gpus=1), 3) == {"TF_NUM_INTRAOP_THREADS": "3"}  # Ray sets it to its GPU


def test_actors_without_a_gpu_see_none(ray_session: Any) -> None:
    """Ray 2.60 leaves a num_gpus=0 actor the node's CUDA_VISIBLE_DEVICES (a bare actor shows it):
    the replay, an explorer, the evaluator and a CPU learner run with it empty, as launch.py makes them."""
    import ray

    from distributed import topology

    def visible(actor: Any) -> str | None:
        return ray.get(actor.__ray_call__.remote(lambda self: os.environ.get("CUDA_VISIBLE_DEVICES")), timeout=120)

    @ray.remote(num_cpus=0)
    class Bare:
        pass

    cfg = Config(num_actors=1, envs_per_actor=1, replay_capacity=200, learning_starts=50, batch_size=8)
    name = f"replay-gpu-test-{os.getpid()}"
    replay = topology.replay_actor(cfg.replay_capacity, cfg.num_streams, seed=0, name=name)
    actors = {"replay": replay, "explorer": topology.explorer_actors(cfg, name, 0, cpus=0.5)[0],
              "evaluator": topology.evaluator_actor(cfg, 4, 0), "learner": topology.learner_actor(cfg, 4, name, 1)}
    bare = Bare.remote()
    try:
        assert visible(bare) == os.environ.get("CUDA_VISIBLE_DEVICES")  # what the node has: not hidden by Ray
        assert {role: visible(actor) for role, actor in actors.items()} == dict.fromkeys(actors, "")
    finally:
        for actor in [*actors.values(), bare]:
            ray.kill(actor)


GPU_REFUSAL = """
import sys
from ray.cluster_utils import Cluster
import launch
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})  # a GPU Ray counts
try:
    rc = launch.main(["--num-actors", "1", "--envs-per-actor", "1", "--learning-starts", "100", "--replay-capacity",
                      "1000", "--eval-every", "0", "--address", cluster.address, "--learner-gpus", "1",
                      "--run-dir", sys.argv[1]])
finally:
    cluster.shutdown()
print("RC", rc)
"""


def test_a_learner_whose_tensorflow_sees_no_gpu_is_refused(tmp_path: Path) -> None:
    """Ray has a GPU (a fake one) and gives it to the learner, but TensorFlow there finds none (here:
    no GPU at all; on a GPU node: no CUDA libraries): one line saying how to install them, exit 2, and
    neither config.json nor a network written (the driver had only opened its logs)."""
    env = dict(os.environ, **kerasrl_compat.PROCESS_ENV, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    out = run_with_private_ray([sys.executable, "-c", GPU_REFUSAL, str(tmp_path / "run")], env, tmp_path, 300, "dqng")
    assert "RC 2" in out.stdout, (out.stdout[-2000:], out.stderr[-3000:])
    errors = [line for line in out.stderr.splitlines() if line.startswith("launch.py: error:")]
    assert errors == ["launch.py: error: --learner-gpus 1: TensorFlow in the learner sees no GPU (no CUDA "
                      "libraries?); install them with `DQN_GPU=1 ./dqn launch ...` (docs/gpu.md)"], out.stderr[-3000:]
    written = {p.name for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert "metrics.jsonl" in written and not written & {"config.json", "policy.h5", "checkpoint.npz"}, written
