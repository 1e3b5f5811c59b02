"""Ray's cluster launcher for real, over SSH: `ray up` of cluster-local.yaml with only its CHANGE
lines set, on a head and a worker that are sshd instances on 127.0.0.2 and 127.0.0.3, each in its
own PID and mount namespaces (tests/sshnodes.py). Then a `ray submit` run and a `ray job submit`
run, each leaving a policy.h5 that stock keras-rl loads and plays, with the explorers on the worker;
a client without the token is refused; docs/cluster.md's teardown leaves no Ray process on any node.

Needs root, namespaces, sshd and rsync (tools/system-deps.sh installs the last two with apt-get).
Only 127.0.0.0/8 is contacted. The nodes install the project's environment from
requirements.lock.txt as a new machine would, with this machine's pip cache: about a minute each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshnodes

ROOT = Path(__file__).resolve().parents[1]
RAY = ROOT / ".venv" / "bin" / "ray"
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
TINY = ["--num-actors", "1", "--envs-per-actor", "2", "--total-env-steps", "2000", "--learning-starts", "400",
        "--replay-capacity", "3000", "--batch-size", "8", "--samples-per-insert", "1", "--updates-per-call", "10",
        "--learner-threads", "1", "--weight-sync-every", "100", "--eval-every", "0", "--export-every", "1000",
        "--log-every", "5", "--seed", "3"]
RAY_PROCESS = re.compile(r"ray|gcs_server|raylet|dashboard|log_monitor|monitor\.py|default_worker|launch\.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(key: Path) -> str:
    """cluster-local.yaml with its four CHANGE lines set to the test's nodes, and nothing else changed."""
    values = {"head_ip": HEAD, "worker_ips": f"[{WORKER}]", "ssh_user": "root", "ssh_private_key": str(key)}
    lines, changed = [], []
    for line in (ROOT / "cluster-local.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)(\w+):\s*(.*?)\s*(#\s*CHANGE\b.*)$", line)
        if m:
            changed.append(m.group(2))
            line = f"{m.group(1)}{m.group(2)}: {values[m.group(2)]}  {m.group(4)}"
        lines.append(line)
    assert sorted(changed) == sorted(values), f"cluster-local.yaml's CHANGE lines are {changed}"
    return "\n".join(lines) + "\n"


class Launcher:
    """The machine a user runs `ray` on: this one, with its own HOME (key, token) and temp folder."""

    def __init__(self, folder: Path) -> None:
        self.home, self.tmp, self.log = folder / "home", folder / "tmp", folder / "launcher.log"
        self.tmp.mkdir(parents=True)
        (self.home / ".ray").mkdir(parents=True)
        self.key = sshnodes.keypair(self.home / ".ssh")
        self.config = folder / "cluster-local.yaml"
        self.config.write_text(_config(self.key))
        self.background: list[subprocess.Popen] = []
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "PYTHON", "TF_", "OMP_")) and k != "VIRTUAL_ENV"}
        self.env = dict(env, HOME=str(self.home), TMPDIR=str(self.tmp), RAY_TMPDIR=str(self.tmp),
                        PATH=f"{RAY.parent}:{env.get('PATH', '/usr/bin:/bin')}", RAY_USAGE_STATS_ENABLED="0")
        token = self.ray("get-auth-token", "--generate", timeout=60).stdout.strip()
        assert len(token) >= 32 and (self.home / ".ray" / "auth_token").exists()

    def ray(self, *args: str, timeout: float, check: bool = True, auth: bool = True,
            home: Path | None = None) -> subprocess.CompletedProcess:
        """One `ray` command from the repository root, as the docs give it; its process group goes on timeout."""
        env = dict(self.env, **({"RAY_AUTH_MODE": "token"} if auth else {}))
        if home is not None:
            env["HOME"] = str(home)
        proc = subprocess.Popen([str(RAY), *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n(killed after {timeout} s)"
        with self.log.open("a") as f:
            f.write(f"\n$ ray {' '.join(args)}  -> {proc.returncode}\n{out}\n{err}\n")
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            assert proc.returncode == 0, f"ray {' '.join(args[:2])} failed:\n{out[-3000:]}\n{err[-3000:]}"
        return result

    def forward_dashboard(self, remote_port: int) -> str:
        """`ray dashboard` (SSH port forward to the head's dashboard), as docs/cluster.md says."""
        port = _free_port()
        proc = subprocess.Popen([str(RAY), "dashboard", "-p", str(port), "--remote-port", str(remote_port),
                                 str(self.config)], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.background.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            assert proc.poll() is None, "ray dashboard exited"
            time.sleep(0.5)
        raise AssertionError("ray dashboard did not forward the port")

    def state(self, address: str, what: str) -> list[dict]:
        out = self.ray("list", what, "--address", address, "--format", "json", "--detail", "--limit", "1000",
                       timeout=60)
        return json.loads(out.stdout)

    def close(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # the ssh connection masters our `ray` commands left (ControlPersist): ours name our key
        for pid, args in sshnodes.command_lines().items():
            if args.startswith("ssh ") and str(self.key) in args:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Launcher, dict[str, sshnodes.Node]]]:
    why = sshnodes.why_not()
    if why:
        pytest.skip(f"the launcher test {why}")
    missing = sshnodes.ensure_system_deps()
    assert missing is None, missing
    # the nodes share this machine's network: the head's GCS and its dashboard agent's second
    # listener (127.0.0.1:52365, where `ray job submit` lands) need these free; another Ray on a shared
    # machine may hold one for a while
    needed = [(HEAD, 22), (WORKER, 22), (HEAD, 6379), ("127.0.0.1", 52365)]
    deadline = time.monotonic() + 300
    while (taken := [f"{ip}:{port}" for ip, port in needed if not sshnodes.port_free(ip, port)]) and \
            time.monotonic() < deadline:
        time.sleep(5)
    assert not taken, f"{', '.join(taken)} taken on this machine (by another Ray?); the test's nodes need them"
    base = tmp_path_factory.mktemp("launcher", numbered=True)
    made = [p for p in (Path("/run/sshd"), Path("/tmp/ray")) if not p.exists()]
    for p in made:
        p.mkdir(parents=True)
    control = {p for p in Path("/tmp").glob("ray_ssh_*")}
    launcher = Launcher(base / "launcher")
    pip_cache = Path(subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True,
                                    text=True).stdout.strip() or Path.home() / ".cache" / "pip")
    pip_cache.mkdir(parents=True, exist_ok=True)
    share = {".cache/pip": pip_cache}
    if (Path.home() / ".config" / "pip").is_dir():
        share[".config/pip"] = Path.home() / ".config" / "pip"
    nodes: dict[str, sshnodes.Node] = {}
    try:
        for ip in (HEAD, WORKER):
            nodes[ip] = sshnodes.start(ip, base / ip, launcher.key.with_suffix(".pub"), share)
        yield launcher, nodes
    finally:
        launcher.close()
        for node in nodes.values():
            node.stop()
            shutil.rmtree(node.home, ignore_errors=True)  # its 2.6 GB environment; the logs stay
        for p in set(Path("/tmp").glob("ray_ssh_*")) - control:
            shutil.rmtree(p, ignore_errors=True)
        for p in reversed(made):
            try:
                p.rmdir()
            except OSError:
                pass


def _run_dir_ok(run_dir: Path) -> None:
    assert (run_dir / "policy.h5").stat().st_size > 1_000_000, sorted(p.name for p in run_dir.iterdir())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["env_steps"] >= 2000


def test_ray_up_submit_job_and_down_over_ssh(cluster: tuple[Launcher, dict[str, sshnodes.Node]],
                                             tmp_path: Path) -> None:
    launcher, nodes = cluster
    head, worker = nodes[HEAD], nodes[WORKER]
    up = launcher.ray("up", "-y", str(launcher.config), timeout=900)
    # 8265 unless another Ray on this machine (the nodes' network) holds it: ray start then takes the next
    port = re.search(r"view the dashboard at\s*(?:\x1b\[[0-9;]*m)*127\.0\.0\.1:(\d+)", up.stdout + up.stderr)
    assert port, "ray up did not say where the dashboard listens"
    # the repository went to the head without .venv, runs/ or .git (rsync_exclude and .gitignore)
    shipped = head.home / "dqn"
    assert (shipped / "launch.py").is_file() and (shipped / "tools" / "stop-workers.sh").is_file()
    assert not (shipped / ".git").exists() and not (shipped / "runs").exists()
    assert (shipped / ".venv").is_dir() and not (shipped / ".venv").is_symlink(), "the node's own venv"
    dashboard = launcher.forward_dashboard(int(port.group(1)))
    assert HEAD in {n["node_ip"] for n in launcher.state(dashboard, "nodes")}, "the forward reached another Ray"

    # the head's autoscaler (v1) starts the worker: wait until it has joined with its explorers
    deadline = time.monotonic() + 600
    while True:
        alive = [n for n in launcher.state(dashboard, "nodes") if n["state"] == "ALIVE"]
        if any(n["node_ip"] == WORKER for n in alive) or time.monotonic() > deadline:
            break
        time.sleep(10)
    by_ip = {n["node_ip"]: n for n in alive}
    assert set(by_ip) == {HEAD, WORKER}, f"nodes registered under {sorted(by_ip)} (the yaml's: {HEAD}, {WORKER})"
    cores = len(os.sched_getaffinity(0))
    assert by_ip[WORKER]["resources_total"].get("explorer") == cores, by_ip[WORKER]["resources_total"]
    assert "explorer" not in by_ip[HEAD]["resources_total"]
    node_ip = {n["node_id"]: n["node_ip"] for n in alive}
    # what listens binds to every interface, the node's own address or 127.0.0.1; never to this
    # machine's default-route address, which Ray would have picked; the dashboard to 127.0.0.1 only
    for node in (head, worker):
        sockets = node.listening()
        assert any(name == "raylet" for _, _, name in sockets), sockets
        assert {host for host, _, _ in sockets} <= {"*", node.ip, "127.0.0.1"}, sockets
    assert {host for host, p, _ in head.listening() if p == int(port.group(1))} == {"127.0.0.1"}

    # `ray submit`: launch.py runs on the head, against the code ray up copied
    launcher.ray("submit", str(launcher.config), "launch.py", "--", "--address", "auto", "--explorer-resource",
                 "explorer", "--run-dir", "/root/runs/submitted", *TINY, timeout=600)
    # `ray job submit`: the working copy shipped as the job's working_dir, through the forwarded dashboard
    launcher.ray("job", "submit", "--address", dashboard, "--working-dir", ".", "--", "python", "launch.py",
                 "--address", "auto", "--explorer-resource", "explorer", "--run-dir", "/root/runs/job", *TINY,
                 timeout=600)
    actors = launcher.state(dashboard, "actors")
    placed = {(a["class_name"], node_ip.get(a["node_id"])) for a in actors}
    explorers = {ip for name, ip in placed if name == "Explorer"}
    assert explorers == {WORKER}, f"explorers ran on {explorers}"
    assert {ip for name, ip in placed if name in ("Learner", "ReplayServer")} == {HEAD}, placed

    # both runs' files, copied back as the docs say
    out = tmp_path / "out"
    out.mkdir()
    for name in ("submitted", "job"):
        launcher.ray("rsync-down", str(launcher.config), f"/root/runs/{name}/", str(out / name), timeout=120)
        _run_dir_ok(out / name)
    stock = ROOT / "tests" / "stock_kerasrl.py"
    check = subprocess.run([sys.executable, str(stock), str(out / "submitted" / "policy.h5"),
                            str(out / "job" / "policy.h5")], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert check.returncode == 0 and check.stdout.count("STOCK_OK") == 2, (check.stdout[-2000:],
                                                                           check.stderr[-2000:])

    # no token, no entry: a driver straight at the GCS, and `ray job` through the dashboard
    stranger = tmp_path / "stranger"
    (stranger / ".ray").mkdir(parents=True)
    job = launcher.ray("job", "list", "--address", dashboard, timeout=60, check=False, auth=False, home=stranger)
    assert job.returncode != 0 and "AuthenticationError" in job.stderr, job.stderr[-2000:]
    driver = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='{HEAD}:6379'); print('JOINED')"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(launcher.env, HOME=str(stranger), PYTHONPATH=""))
    with launcher.log.open("a") as f:
        f.write(f"\n$ (driver without the token) -> {driver.returncode}\n{driver.stdout}\n{driver.stderr}\n")
    assert driver.returncode != 0 and "JOINED" not in driver.stdout
    assert "InvalidAuthToken" in driver.stderr, driver.stderr[-2000:]

    # teardown as docs/cluster.md gives it: the workers, then `ray down` (the head)
    assert any("raylet" in a for a in worker.processes().values()), "the worker ran no raylet"
    for proc in launcher.background:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    launcher.background.clear()
    launcher.ray("exec", str(launcher.config), "bash ~/dqn/tools/stop-workers.sh", timeout=180)
    launcher.ray("down", "-y", str(launcher.config), timeout=180)
    for node in (head, worker):
        deadline = time.monotonic() + 30
        while True:
            left = {pid: args for pid, args in node.processes().items()
                    if pid != node.init_pid and not args.startswith("sshd") and RAY_PROCESS.search(args)}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not left, f"Ray processes left on {node.ip}: {left}"
