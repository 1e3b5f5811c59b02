"""``./dqn``'s choice of Python, on a copy of the script with a one-package lock (seconds, not the
2.6 GB environment): PYTHON picks one and re-makes a venv built on another, without PYTHON the
venv keeps its own, a changed lock is installed in place, and an unsupported or missing Python
is a one-line error that leaves the venv as it was."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["bash", "cat", "cut", "dirname", "flock", "rm", "sed", "sha256sum"]
VERSION = "import sys; print('%d.%d' % sys.version_info[:2])"
MINE = f"{sys.version_info[0]}.{sys.version_info[1]}"


def version_of(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", VERSION], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def other_python() -> str | None:
    """A supported Python of another minor version than the one running the tests."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for candidate in ["python3.11", "python3.12", "python3.13",
                      *sorted(glob.glob(f"{pyenv}/versions/3.1[123]*/bin/python3.1[123]"))]:
        path = shutil.which(candidate)
        if path and version_of(path) in {"3.11", "3.12", "3.13"} - {MINE}:
            return path
    return None


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of ./dqn beside a lock of one small package, and a PATH of the tools it needs only."""
    (tmp_path / "proj").mkdir()
    shutil.copy(ROOT / "dqn", tmp_path / "proj" / "dqn")
    (tmp_path / "proj" / "requirements.lock.txt").write_text("six==1.17.0\n")
    (tmp_path / "bin").mkdir()
    for tool in TOOLS:
        (tmp_path / "bin" / tool).symlink_to(shutil.which(tool))
    return tmp_path / "proj"


def dqn(project: Path, *args: str, python: str | None = None, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "DQN_VENV")}
    if python:
        env["PYTHON"] = python
    if path:
        env["PATH"] = path
    return subprocess.run(["bash", str(project / "dqn"), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dqn: error: "), proc.stderr
    return lines[0]


def test_python_choice_and_venv_remake(project: Path) -> None:
    other = other_python()
    if other is None:
        pytest.skip("needs a second Python among 3.11, 3.12 and 3.13")
    mine, theirs = MINE, version_of(other)

    first = dqn(project, "python", "-c", VERSION, python=sys.executable)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == mine
    assert (project / ".venv" / ".dqn-stamp").read_text().split()[1] == mine

    switched = dqn(project, "python", "-c", VERSION, python=other)
    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.strip() == theirs
    assert f"re-making {project / '.venv'} for Python {theirs} (it was built on {mine})" in switched.stderr

    kept = dqn(project, "python", "-c", VERSION)  # no PYTHON: the venv's own, not the first on PATH
    assert kept.returncode == 0 and kept.stdout.strip() == theirs
    assert kept.stderr == ""  # nothing to set up

    for bad in ["/nonexistent/python3", shutil.which("false")]:
        assert f"PYTHON={bad} does not run" in one_line_error(dqn(project, "python", "-c", VERSION, python=bad))
    assert dqn(project, "python", "-c", VERSION).stdout.strip() == theirs  # the venv is untouched

    both = "import six, termcolor; print('both')"
    assert "No module named 'termcolor'" in dqn(project, "python", "-c", both).stderr
    with open(project / "requirements.lock.txt", "a") as lock:
        lock.write("termcolor==3.3.0\n")  # a package the venv lacks: the changed lock must be installed
    updated = dqn(project, "python", "-c", both)
    assert updated.returncode == 0 and updated.stdout.strip() == "both", updated.stderr
    assert "setting up" in updated.stderr and "re-making" not in updated.stderr  # in place, six kept


def test_no_supported_python_is_a_one_line_error(project: Path) -> None:
    tools = str(project.parent / "bin")
    assert "(python3 is missing)" in one_line_error(dqn(project, "test", path=tools))
    fake = project.parent / "bin" / "python3"
    fake.write_text("#!/bin/sh\necho 3.10\n")
    fake.chmod(0o755)
    line = one_line_error(dqn(project, "test", path=tools))
    assert line.startswith("dqn: error: no Python 3.11, 3.12 or 3.13 on PATH (python3 is 3.10)"), line
    line = one_line_error(dqn(project, "test", python=str(fake), path=tools))
    assert line.startswith(f"dqn: error: PYTHON={fake} is Python 3.10; supported are 3.11, 3.12 and 3.13"), line
    assert not (project / ".venv").exists()


def test_set_up_shows_each_package_on_stderr_and_leaves_stdout_to_the_command(project: Path) -> None:
    """The first run downloads about 2.6 GB: it must not look stuck. Away from a terminal (this
    pipe, a CI log) pip prints a line per package; the command's own output stays alone on stdout."""
    proc = dqn(project, "python", "-c", "import six; print(six.__version__)", python=sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1.17.0\n"
    assert "downloads about 2.6 GB" in proc.stderr
    lines = proc.stderr.splitlines()  # "Collecting six==1.17.0", or "Processing .../six-...whl" (wheelhouse)
    assert any(line.startswith(("Collecting six", "Processing ")) and "six" in line for line in lines), proc.stderr
    assert "Successfully installed six-1.17.0" in lines, proc.stderr
    again = dqn(project, "python", "-c", "print(1)")
    assert again.returncode == 0 and again.stderr == ""  # set up once: nothing more to show
