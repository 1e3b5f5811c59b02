#!/usr/bin/env bash
# System packages for Ray's cluster launcher: rsync and ssh on the machine that runs `ray up`
# (file_mounts are copied with rsync over ssh) and on every node, openssh-server for
# tests/test_launcher.py (its "nodes" are sshd instances on loopback addresses), and a system
# Python 3.11 with venv, which a node's login shell finds without anyone's home (./dqn builds the
# node's environment with it). Idempotent: does nothing when all are there. Installs with apt-get
# as root on Debian/Ubuntu; anywhere else it names what is missing and exits 1.
set -euo pipefail
need=()
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
python="$(PATH=/usr/local/bin:/usr/bin:/bin command -v python3.11 || true)"
if [ -z "$python" ] || ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  need+=(python3.11-venv)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${need[*]}: install them with your system's package manager" >&2
  exit 1
fi
# Debian starts an installed service at once (sshd on every interface, port 22): a policy-rc.d
# that says "no" keeps it stopped; ours goes again afterwards.
policy=/usr/sbin/policy-rc.d
ours=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=true
fi
trap 'if $ours; then rm -f "$policy"; fi' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "system-deps: installed ${need[*]}" >&2
