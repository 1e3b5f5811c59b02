"""Running on a Ray cluster: the cluster launcher configs, the code shipped to the nodes, a clear
error for an address nobody answers at, and a real multi-node run that loses a worker node."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from procs import run_with_private_ray

import kerasrl_compat
from distributed import raystart

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-local.yaml"]


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _prepared(raw: dict) -> dict:
    """The config as `ray up` sees it: Ray's defaults filled in, then Ray's own schema check."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(raw)
    validate_config(config)
    return config


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_config_passes_ray_validation(name: str) -> None:
    config = _prepared(_load(name))
    assert config["head_node_type"] in config["available_node_types"]
    with pytest.raises(Exception, match="not_a_ray_key"):  # the check has teeth: unknown keys fail
        _prepared({**_load(name), "not_a_ray_key": 1})


def test_aws_config_puts_explorers_on_workers_only() -> None:
    config = _prepared(_load("cluster.yaml"))
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "explorer" not in head["resources"], "explorers must not land on the head (learner, replay)"
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers and all(v["resources"].get("explorer", 0) >= 1 for v in workers.values())
    assert all(v["max_workers"] >= v["min_workers"] for v in workers.values())
    assert "," not in config["provider"]["availability_zone"], "one zone: cross-zone experience is billed"
    assert config["provider"].get("cache_stopped_nodes") is False, "ray down must terminate, not stop"


def test_the_documented_command_fills_the_aws_cluster_exactly() -> None:
    """The `ray submit` line of cluster.yaml's header asks for as many explorers as its workers can
    hold: more would wait forever, fewer leave a paid worker's vCPUs idle."""
    header = "\n".join(line for line in (ROOT / "cluster.yaml").read_text().splitlines() if line.startswith("#"))
    asked = [int(n) for n in re.findall(r"--num-actors (\d+)", header)]
    config = _prepared(_load("cluster.yaml"))
    workers = [v for k, v in config["available_node_types"].items() if k != config["head_node_type"]]
    assert len(workers) == 1, "one worker type: the capacity below is its count times its units"
    capacity = min(config["max_workers"], workers[0]["max_workers"]) * workers[0]["resources"]["explorer"]
    assert asked == [capacity], (asked, capacity)


def test_local_config_declares_explorers_on_workers_only() -> None:
    config = _prepared(_load("cluster-local.yaml"))
    assert not any("explorer" in c for c in config["head_start_ray_commands"])
    assert any("--resources" in c and "explorer" in c for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_config_is_secure_by_default(name: str) -> None:
    text = (ROOT / name).read_text()
    config = _prepared(_load(name))
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", head_start)
    assert "0.0.0.0" not in text and "::/0" not in text, "nothing may be bound or opened to every address"
    # the token reaches every node from the user's own file, and every shell runs with auth on
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    setup = " ".join(config["setup_commands"])
    assert "RAY_AUTH_MODE=token" in setup and "chmod 600 ~/.ray/auth_token" in setup
    if config["provider"]["type"] == "aws":
        assert config["provider"]["security_group"]["GroupName"], "a group the user creates with SSH from one IP"
        assert "IpPermissions" not in config["provider"]["security_group"]
        for node in config["available_node_types"].values():
            assert node["node_config"]["MetadataOptions"]["HttpTokens"] == "required"
            assert all(d["Ebs"]["Encrypted"] for d in node["node_config"]["BlockDeviceMappings"])


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS credentials": r"(?i)aws_(secret_access_key|access_key_id|session_token)\s*[:=]\s*\S",
    "a literal token": r"\b[0-9a-f]{64}\b|RAY_AUTH_TOKEN\s*=\s*\S",
    "a private key": r"BEGIN [A-Z ]*PRIVATE KEY",
}


@pytest.mark.parametrize("name", [*CONFIGS, "docs/cluster.md"])
def test_no_secrets_in_cluster_files(name: str) -> None:
    text = (ROOT / name).read_text()
    for what, pattern in SECRET_PATTERNS.items():
        assert not re.search(pattern, text), f"{name} seems to hold {what}"


@pytest.mark.parametrize("name", CONFIGS)
def test_file_mounts_ship_the_repository_root(name: str) -> None:
    """`ray submit` runs launch.py on the head against the code file_mounts copied there: the whole
    repository, so a new top-level package needs no new line here."""
    raw = _load(name)
    assert raw["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token", "~/dqn": "."}
    assert raw["rsync_filter"] == [".gitignore"] and {"/.git", "/.venv", "/runs"} <= set(raw["rsync_exclude"])
    assert (raw["rsync_exclude"], raw["rsync_filter"]) == (_load(CONFIGS[0])["rsync_exclude"],
                                                          _load(CONFIGS[0])["rsync_filter"])


def test_rsync_with_rays_own_arguments_leaves_out_venv_runs_and_git(tmp_path: Path) -> None:
    """The exact rsync options Ray 2.60 builds from the configs' rsync_exclude and rsync_filter (for
    file_mounts, from your machine to the head and from the head to the workers), run on a tree that
    has everything a working copy may hold."""
    import sshnodes
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    missing = sshnodes.ensure_system_deps()
    if missing:
        pytest.skip(missing)
    raw = _load("cluster-local.yaml")
    args = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_exclude": raw["rsync_exclude"],
                                                             "rsync_filter": raw["rsync_filter"]})
    src, dst = tmp_path / "repo", tmp_path / "node"
    kept = ["launch.py", "requirements.lock.txt", "dqn", "tools/stop-workers.sh", "newpkg/__init__.py",
            "newpkg/sub/mod.py", "docs/policy.h5", "tests/stock_kerasrl.py", ".gitignore"]
    dropped = [".venv/bin/python", ".venv/lib/x.py", ".venv.lock", ".git/HEAD", "runs/x/policy.h5",
               "runs/x/replay.npz", "actors/__pycache__/explorer.cpython-311.pyc", "newpkg/__pycache__/a.pyc",
               "policy.h5", "play.gif", ".pytest_cache/v/x", ".ruff_cache/x", "stray.pyc"]
    for rel in kept + dropped:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    shutil.copy(ROOT / ".gitignore", src / ".gitignore")
    subprocess.run(["rsync", "-az", *args, f"{src}/", f"{dst}/"], check=True)
    shipped = {str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()}
    assert shipped == set(kept), (sorted(shipped - set(kept)), sorted(set(kept) - shipped))


def test_code_is_shipped_as_working_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package
    from ray.runtime_env.runtime_env import _merge_runtime_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    env = raystart.cluster_runtime_env()
    assert env["working_dir"] == str(ROOT) and env["env_vars"] == kerasrl_compat.PROCESS_ENV
    # what Ray would upload: the code, nothing of the virtual env, runs, tests or git
    package = tmp_path / "pkg.zip"
    create_package(env["working_dir"], package, include_gitignore=True,
                   excludes=ray_constants.get_runtime_env_default_excludes() + env["excludes"])
    names = zipfile.ZipFile(package).namelist()
    for needed in ("launch.py", "config.py", "kerasrl_compat.py", "actors/explorer.py", "learner/learner.py",
                   "replay/server.py", "core/network.py", "distributed/driver.py"):
        assert any(n.endswith(needed) for n in names), needed
    assert not any(part in n for n in names for part in (".venv/", "runs/", "tests/", ".git/"))
    assert package.stat().st_size < 5_000_000

    # under `ray job submit --working-dir`: the job's code and env vars stay; Ray can merge the rest
    job = {"working_dir": "gcs://_ray_pkg_0123.zip", "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "0"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job}))
    env = raystart.cluster_runtime_env()
    assert "working_dir" not in env and "TF_CPP_MIN_LOG_LEVEL" not in env["env_vars"]
    merged = _merge_runtime_env(job, env)
    assert merged is not None and merged["working_dir"] == job["working_dir"]
    assert merged["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    full_env.update(kerasrl_compat.PROCESS_ENV, **env)
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("how", ["host:port", "auto"])
def test_an_address_nobody_answers_at_is_a_one_line_error(how: str, tmp_path: Path) -> None:
    port = _unused_port()
    run_dir = tmp_path / "run"
    if how == "auto":  # 'auto' reads RAY_ADDRESS first: point it at the unused port, not at anyone's cluster
        out = _launch(["--address", "auto", "--run-dir", str(run_dir)], RAY_ADDRESS=f"127.0.0.1:{port}")
    else:
        out = _launch(["--address", f"127.0.0.1:{port}", "--run-dir", str(run_dir)])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "no Ray cluster answers" in lines[0] and "ray up" in lines[0]
    assert not run_dir.exists(), "nothing may be written before the cluster answers"


def test_an_address_where_something_else_answers_is_a_one_line_error(tmp_path: Path) -> None:
    """A web server at the address: ray.init would wait on it for minutes; we say what it is at once."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    run_dir = tmp_path / "run"
    try:
        out = _launch(["--address", f"127.0.0.1:{server.server_port}", "--run-dir", str(run_dir)])
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "answers, but not as a Ray head" in lines[0] and "port 6379" in lines[0]
    assert not run_dir.exists()


def test_a_shipped_job_needs_an_absolute_run_dir(tmp_path: Path) -> None:
    job = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}})
    out = _launch(["--address", f"127.0.0.1:{_unused_port()}", "--run-dir", "runs/x"],
                  RAY_JOB_CONFIG_JSON_ENV_VAR=job)
    assert out.returncode == 2 and "absolute --run-dir" in out.stderr and "Traceback" not in out.stderr


def _driver_report(argv: list[str], env: dict[str, str], cwd: Path, timeout: float,
                   prefix: str) -> tuple[dict, str]:
    """Run a tests/*_driver.py script with a Ray of its own: its REPORT line, parsed, and its stdout."""
    out = run_with_private_ray(argv, env, cwd, timeout, prefix)
    reports = [line[len("REPORT "):] for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and reports, (out.stdout[-3000:], out.stderr[-3000:])
    return json.loads(reports[0]), out.stdout


def test_multi_node_run_survives_losing_a_worker_node(tmp_path: Path) -> None:
    """A head and three worker nodes on this machine, token auth on; launch.py joins by address with
    --explorer-resource: the 2 explorers play on distinct workers, one worker is killed mid-run, its
    explorer comes back on the spare worker, and the run completes with a valid policy.h5."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, **kerasrl_compat.PROCESS_ENV, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    for leak in ("PYTHONPATH", "RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        env.pop(leak, None)  # no PYTHONPATH: the nodes can import the project only from the shipped code
    r, _ = _driver_report([sys.executable, str(ROOT / "tests/multinode_driver.py"), str(run_dir)], env, tmp_path,
                          300, "dqnc")
    head, workers = r["head"], set(r["workers"])

    assert r["rc"] == 0 and r["env_steps"] == 3000
    # the code went to the nodes as Ray's working_dir, and the explorers ran that copy
    assert r["runtime_env"]["working_dir"].startswith("gcs://")
    assert all("runtime_resources/working_dir_files" in p["code"] for p in r["placements"])
    # the driver, the learner and the replay on the head; explorers on distinct workers only
    assert r["driver_node"] == head and r["learner_node"] == head and r["replay_node"] == head
    first = {}
    for p in r["placements"]:
        first.setdefault(p["explorer"], p["node"])
    assert set(first) == {0, 1} and first[0] != first[1] and set(first.values()) <= workers
    assert all(p["node"] in workers for p in r["placements"])
    # explorer 0's node was killed; the explorer came back on the spare worker and played on
    assert r["removed_node"] == first[0]
    spare = (workers - set(first.values())).pop()
    assert any(p["explorer"] == 0 and p["node"] == spare for p in r["placements"])
    assert r["explorer_failures"] >= 1
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["env_steps"] == 3000 and last["explorer_restarts"] >= 1
    assert r["policy_ok"] is True
    assert (run_dir / "policy.h5").stat().st_size > 6_000_000


def test_placement_on_a_cluster_shaped_like_cluster_yaml(tmp_path: Path) -> None:
    """tests/placement_driver.py: a 16-CPU head without `explorer`, a worker with 2 `explorer`
    units before launch.py starts and one with 16 after. A replay the head's declared memory cannot
    hold is refused in one line; then every explorer runs on a worker, reserving 1 CPU and 1
    `explorer`, the learner runs on the head with its CPUs less the replay's and the driver's (no
    evaluator in this run), the third explorer is announced as waiting, and it plays once the second
    worker joins."""
    env = dict(os.environ, **kerasrl_compat.PROCESS_ENV, RAY_AUTH_MODE="disabled")
    for leak in ("PYTHONPATH", "RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        env.pop(leak, None)
    r, stdout = _driver_report([sys.executable, str(ROOT / "tests/placement_driver.py"), str(tmp_path)], env,
                               tmp_path, 400, "dqnp")
    head, first, second = r["head"], r["first_worker"], r["second_worker"]

    # the memory check: one line, exit 2, nothing written
    assert r["refused_rc"] == 2 and not r["refused_dir_exists"]
    refusal = r["refused_stderr"].strip().splitlines()
    assert len(refusal) == 1 and "Traceback" not in r["refused_stderr"], r["refused_stderr"]
    assert "--replay-capacity 1,000,000" in refusal[0] and "driver's node" in refusal[0]

    assert r["rc"] == 0 and r["env_steps"] == 2500
    # the learner on the head: 16 CPUs, less 1 for the replay and 1 for the driver, no explorer there
    expected_threads = 16 - 1 - 1
    assert r["learner"]["node"] == head
    assert r["learner"]["env_threads"] == str(expected_threads)
    assert f"{expected_threads} TensorFlow thread(s) on node" in stdout and head[:8] in stdout
    # every explorer on a worker, 1 CPU and 1 explorer each; at most 2 on the first worker
    nodes = {p["explorer"]: p["node"] for p in r["placements"]}
    assert set(nodes) == {0, 1, 2} and set(nodes.values()) <= {first, second}
    assert list(nodes.values()).count(first) == 2
    assert all(p["reserved"] == {"CPU": 1.0, "explorer": 1.0} for p in r["placements"])
    # the third explorer was announced as waiting for a node, and played once the second worker joined
    waiting = [line for line in stdout.splitlines() if line.startswith("waiting for nodes:")]
    assert waiting and "1 of 3 explorer(s) not placed" in waiting[0] and "0 'explorer'" in waiting[0], waiting
    assert any(p["node"] == second and p["after_second_worker"] for p in r["placements"])
    assert "explorers placed: all 3 run" in stdout
