#!/usr/bin/env bash
# Stops Ray on every worker of a cluster-local.yaml cluster. `ray down` stops Ray on the head only
# (the local provider cannot turn machines off, and Ray does not SSH to the workers on the way
# down), so the workers' raylets, agents and explorers would keep running. Run it on the head,
# before `ray down`, from the repository root on your machine:
#
#   ray exec cluster-local.yaml 'bash ~/dqn/tools/stop-workers.sh'
#
# It reads the worker addresses, the SSH user and key from the config `ray up` left on the head
# (~/ray_bootstrap_config.yaml, ~/ray_bootstrap_key.pem) and runs `ray stop` on each worker.
# Exit status 1 when a worker could not be reached or its Ray did not stop.
set -uo pipefail
config="$HOME/ray_bootstrap_config.yaml"
[ -f "$config" ] || { echo "stop-workers.sh: no $config: run it on the head (ray exec)" >&2; exit 1; }
read -r user key ips < <("$HOME/dqn/.venv/bin/python" - "$config" <<'PY'
import os, sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
key = os.path.expanduser(c["auth"].get("ssh_private_key", "~/ray_bootstrap_key.pem"))
print(c["auth"]["ssh_user"], key, *c["provider"].get("worker_ips", []))
PY
)
status=0
for ip in $ips; do
  if ssh -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=10 -o LogLevel=ERROR "$user@$ip" '$HOME/dqn/.venv/bin/ray stop'; then
    echo "stop-workers.sh: Ray stopped on $ip"
  else
    echo "stop-workers.sh: could not stop Ray on $ip" >&2
    status=1
  fi
done
exit $status
