#!/usr/bin/env bash
# Re-resolves requirements-gpu.lock.txt: requirements.lock.txt plus what tensorflow[and-cuda] adds
# (NVIDIA's CUDA 12 wheels), every shared package at the main lock's pin. Run it after changing
# requirements.lock.txt; it downloads nothing but package metadata (pip's dry run, about a minute)
# and works in a scratch venv under /tmp, never the project's.
#
#   bash tools/gpu-lock.sh            # rewrites requirements-gpu.lock.txt
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
SCRATCH="$(mktemp -d /tmp/gpu-lock.XXXXXX)"
trap 'rm -rf "$SCRATCH"' EXIT
TF="$(grep -i '^tensorflow==' "$ROOT/requirements.lock.txt")"

"$PY" -m venv "$SCRATCH/venv"
"$SCRATCH/venv/bin/python" -m pip install --quiet --dry-run --ignore-installed --report "$SCRATCH/report.json" \
  -r "$ROOT/requirements.lock.txt" "${TF/tensorflow/tensorflow[and-cuda]}"
"$SCRATCH/venv/bin/python" - "$ROOT" "$SCRATCH/report.json" "$TF" <<'EOF'
import json, re, sys
root, report, tf = sys.argv[1:]
pins = {m["name"]: m["version"] for m in (i["metadata"] for i in json.load(open(report))["install"])}
header = f"""\
# The optional GPU lock: requirements.lock.txt plus the NVIDIA CUDA 12 libraries that
# {tf.replace('tensorflow', 'tensorflow[and-cuda]')} pulls (about 4.2 GB more). Every package both locks name has the
# same pin (tests/test_gpu.py checks it). Installed by `DQN_GPU=1 ./dqn ...` on top of the
# main lock (docs/gpu.md). Resolved by tools/gpu-lock.sh (pip's dry run on Linux x86_64; the
# NVIDIA wheels are py3-none, one set for Python 3.11-3.13): rerun it after changing the main lock.
"""
lines = [f"{name}=={pins[name]}" for name in sorted(pins, key=lambda n: re.sub(r"[-_.]+", "-", n).lower())]
open(f"{root}/requirements-gpu.lock.txt", "w").write(header + "\n".join(lines) + "\n")
print(f"requirements-gpu.lock.txt: {len(lines)} pins")
EOF
