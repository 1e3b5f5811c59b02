"""Machines for Ray's cluster launcher, made on this one: each "node" is an sshd on its own loopback
address (127.0.0.N, port 22) in its own PID and mount namespaces, with a private /root (its home)
and a private /tmp/ray. `ray stop` on a node sees only that node's processes (its own /proc), and
what `ray up` writes to ~ lands in the node's folder, never in this machine's /root.

Nothing here contacts an address outside 127.0.0.0/8. Every process lives under the node's first
process (PID 1 of its namespace); killing that one makes the kernel kill the rest, and it is
killed too when the test process dies.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"

# PID 1 of a node: makes the node's mounts (after its own imports: /root, where this Python may
# live, is about to be covered), starts sshd in the foreground and reaps every orphan (Ray
# daemonizes its processes, and a namespace's orphans are re-parented to its PID 1).
_INIT = """
import os, subprocess, sys
mounts, sshd = sys.argv[1], sys.argv[2:]
for line in mounts.splitlines():
    subprocess.run(["mount", *line.split("\\t")], check=True)
sshd = subprocess.Popen(sshd)
while True:
    pid, status = os.wait()
    if pid == sshd.pid:
        sys.exit(1)
"""

_SSHD_CONFIG = """\
ListenAddress {ip}
Port 22
HostKey {dir}/host_key
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {dir}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
"""


def why_not() -> str | None:
    """Why this machine cannot make nodes (None when it can)."""
    if sys.platform != "linux":
        return "needs Linux namespaces"
    if os.geteuid() != 0:
        return "needs root (PID and mount namespaces, sshd, bind mounts)"
    probe = subprocess.run(["unshare", "--pid", "--mount", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make PID and mount namespaces here: {probe.stderr.strip()}"
    return None


def port_free(ip: str, port: int) -> bool:
    """Whether a server could listen on ip:port now (connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def keypair(folder: Path) -> Path:
    """A fresh passphrase-less ed25519 key pair; returns the private key's path."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dqn-launcher-test", "-f", str(key)],
                   check=True)
    return key


@dataclass
class Node:
    ip: str
    dir: Path
    unshare: subprocess.Popen
    init_pid: int  # this machine's PID of the namespace's PID 1

    @property
    def home(self) -> Path:
        return self.dir / "home"

    def pids(self) -> list[int]:
        """This machine's PIDs of every process in the node's PID namespace."""
        try:
            ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def processes(self) -> dict[int, str]:
        """PID -> command line of every process in the node (this machine's PIDs)."""
        return command_lines(self.pids())

    def listening(self) -> list[tuple[str, int, str]]:
        """(address, port, process name) of every TCP socket the node's processes listen on, from
        /proc; address "*" for every interface, IPv4-mapped IPv6 addresses as plain IPv4."""
        owner = {}
        for pid in self.pids():
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owner[target[8:-1]] = name
            except OSError:
                continue
        found = []
        for table in ("tcp", "tcp6"):
            for row in Path(f"/proc/{self.init_pid}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in owner:  # 0A: LISTEN
                    host, port = fields[1].split(":")
                    found.append((_address(host), int(port, 16), owner[fields[9]]))
        return found

    def stop(self) -> None:
        """Kill the node: its PID 1 goes, and the kernel kills everything else in the namespace."""
        try:
            os.kill(self.init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.unshare.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.unshare.kill()
            self.unshare.wait(timeout=30)


def start(ip: str, folder: Path, authorized_key: Path, share: dict[str, Path]) -> Node:
    """An sshd on ip:22 as a fresh machine: root's home is folder/home (a copy of /etc/skel, the
    authorized key), /tmp/ray is folder/ray. `share` maps paths inside the home (".cache/pip") to
    folders of this machine bind-mounted there, so the nodes reuse this machine's pip cache."""
    folder.mkdir(parents=True)
    home, ray_tmp = folder / "home", folder / "ray"
    home.mkdir(mode=0o700)
    ray_tmp.mkdir()
    skel = Path("/etc/skel")
    if skel.is_dir():
        shutil.copytree(skel, home, dirs_exist_ok=True, symlinks=True)
    if not (home / ".bashrc").exists():
        (home / ".bashrc").write_text("")  # Ray's node commands `source ~/.bashrc`
    shutil.copy(authorized_key, folder / "authorized_keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")], check=True)
    (folder / "sshd_config").write_text(_SSHD_CONFIG.format(ip=ip, dir=folder))
    mounts = []
    for inside, outside in share.items():
        (home / inside).mkdir(parents=True, exist_ok=True)
        mounts.append(["--bind", str(outside), str(home / inside)])
    mounts += [["--rbind", str(home), "/root"], ["--bind", str(ray_tmp), "/tmp/ray"]]
    log = open(folder / "node.log", "wb")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--mount", "--fork", "--mount-proc", "--propagation", "private", "--kill-child",
         sys.executable, "-c", _INIT, "\n".join("\t".join(m) for m in mounts),
         SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent)
    log.close()
    try:
        init_pid = _child_of(proc)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    node = Node(ip, folder, proc, init_pid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node {ip} did not start: {(folder / 'node.log').read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((ip, 22)) == 0:
                return node
        time.sleep(0.2)
    node.stop()
    raise RuntimeError(f"sshd on {ip}:22 did not answer: {(folder / 'node.log').read_text()[-2000:]}")


def _die_with_parent() -> None:
    """Even if the test process is killed outright, its nodes go: unshare gets SIGKILL when it
    dies, and --kill-child passes that on to the namespace's PID 1."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_of(proc: subprocess.Popen) -> int:
    """unshare --fork's child: PID 1 of the new namespace."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("unshare did not start the node's first process")


def command_lines(pids: list[int] | None = None) -> dict[int, str]:
    """PID -> command line, from /proc, of the given processes (default: all) that still run."""
    if pids is None:
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    found = {}
    for pid in pids:
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            pass
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp's hex address as text: "*" for any, IPv4-mapped IPv6 as IPv4."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 16:  # four host-order 32-bit words
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        if raw[:12] == b"\0" * 10 + b"\xff\xff":
            raw = raw[12:]
        elif raw == b"\0" * 16:
            return "*"
        else:
            return str(ipaddress.IPv6Address(raw))
    else:
        raw = raw[::-1]
    text = str(ipaddress.IPv4Address(raw))
    return "*" if text == "0.0.0.0" else text


def ensure_system_deps() -> str | None:
    """Install rsync and openssh with tools/system-deps.sh; None when present, else why not."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", str(root / "tools" / "system-deps.sh")], capture_output=True, text=True)
    return None if out.returncode == 0 else out.stderr.strip() or "tools/system-deps.sh failed"
