"""The folder tree shows the architecture, and imports keep to it: they flow one way.

    core/ (+ flags, config, kerasrl_compat)  <-  replay/  <-  actors/, learner/  <-  distributed/  <-  launch.py

A role may import the floor below it, never a role beside or above it: the learner process
does not load the emulator, the replay does not load TensorFlow's network code, and no role
reaches into the driver. Imports are read with ``ast``, so a lazy import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {"launch", "train", "play"}
#: what each part of the product may NOT import (its own folder and the floor are always fine)
FORBIDDEN = {
    "core": {"actors", "learner", "replay", "distributed", "bench", *PROGRAMS},
    "config": {"core", "actors", "learner", "replay", "distributed", "bench", *PROGRAMS},
    "flags": {"core", "actors", "learner", "replay", "distributed", "bench", "config", "kerasrl_compat", *PROGRAMS},
    "kerasrl_compat": {"core", "actors", "learner", "replay", "distributed", "bench", "config", *PROGRAMS},
    "replay": {"actors", "learner", "distributed", "bench", *PROGRAMS},
    "learner": {"actors", "distributed", "bench", *PROGRAMS},
    "actors": {"learner", "distributed", "bench", *PROGRAMS},
    "distributed": {"bench", *PROGRAMS},
}


def _modules(part: str) -> list[Path]:
    folder = ROOT / part
    return sorted(folder.glob("*.py")) if folder.is_dir() else [ROOT / f"{part}.py"]


def _imported_packages(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_flow_one_way(part: str) -> None:
    modules = _modules(part)
    assert modules, f"{part} has no modules: is the layout in this test out of date?"
    wrong = {f"{m.relative_to(ROOT)} imports {name}" for m in modules
             for name in _imported_packages(m) & FORBIDDEN[part]}
    assert not wrong, sorted(wrong)


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The parser finds an import inside a function (the way roles import Ray and TensorFlow)."""
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from actors.explorer import Explorer\n    import learner.learner\n")
    assert _imported_packages(module) == {"os", "actors", "learner"}


def test_no_module_of_the_product_is_too_long_to_read() -> None:
    """About 450 lines at most, except the replay memory (one cohesive algorithm); launch.py is the
    command line only."""
    limits = {"replay/memory.py": 700, "launch.py": 210}
    parts = [p for part in FORBIDDEN for p in _modules(part)] + [ROOT / "train.py", ROOT / "play.py",
                                                                 ROOT / "launch.py"]
    long = {str(p.relative_to(ROOT)): n for p in parts
            if (n := len(p.read_text().splitlines())) > limits.get(str(p.relative_to(ROOT)), 460)}
    assert not long, long
