"""Test hosts for the fleet playbooks, made by the tests themselves.

Each host is a network namespace (its own address on a veth pair) and a UTS
namespace (its own host name) running ``sshd`` with a host key and an
authorized client key generated here. The hosts share this machine's kernel
and file system, so every path a playbook writes is given per host in the
inventory (``ecap_prefix``, ``ecap_etc_dir``, ...). Everything is removed at
the end: sshd processes, namespaces (and with them the veth pairs), keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
VENV_BIN = Path(sys.executable).parent
HOSTS = 4  # fleet-1..3 answer; fleet-4's sshd is stopped before the runs (unreachable)


@dataclass
class TestHost:
    name: str
    netns: str
    address: str
    root: Path
    sshd: subprocess.Popen | None = None

    def paths(self) -> dict[str, str]:
        return {
            "ecap_prefix": str(self.root / "opt-ecap"),
            "ecap_etc_dir": str(self.root / "etc-ecap"),
            "ecap_state_dir": str(self.root / "var-lib-ecap"),
            "ecap_run_dir": str(self.root / "run-ecap"),
            "ecap_sysctl_dir": str(self.root / "etc" / "sysctl.d"),
            "ecap_audit_rules_dir": str(self.root / "etc" / "audit" / "rules.d"),
            "ecap_apparmor_dir": str(self.root / "etc" / "apparmor.d"),
            "ecap_systemd_dir": str(self.root / "etc" / "systemd" / "system"),
        }


@dataclass
class Fleet:
    base: Path
    hosts: list[TestHost]
    inventory: Path
    wheelhouse: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def reachable(self) -> list[TestHost]:
        return [h for h in self.hosts if h.sshd is not None]

    def scan_args(self, out: Path) -> list[str]:
        """Extra vars of scan.yml: this fleet's wheelhouse, report dir, ecap-detect."""
        return [
            "-e",
            f"ecap_wheelhouse={self.wheelhouse}",
            "-e",
            f"ecap_fleet_dir={out}",
            "-e",
            f"ecap_controller_detect={VENV_BIN / 'ecap-detect'}",
        ]

    def playbook(self, name: str, *args: str, limit_reachable: bool = False,
                 limit: list | None = None):  # fmt: skip
        """Run a playbook; ``limit`` (hosts) or every reachable host, or all."""
        cmd = ["ansible-playbook", "-i", str(self.inventory), str(ANSIBLE_DIR / name), *args]
        if limit is not None:
            cmd += ["--limit", ",".join(h.name for h in limit)]
        elif limit_reachable:
            cmd += ["--limit", ",".join(h.name for h in self.reachable)]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=600)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _wait_port(address: str, port: int = 22, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sshd_config(host: TestHost, base: Path) -> Path:
    cfg = host.root / "sshd_config"
    cfg.write_text(
        f"ListenAddress {host.address}\n"
        "Port 22\n"
        f"HostKey {base / 'host_key'}\n"
        f"PidFile {host.root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "Subsystem sftp internal-sftp\n"
    )
    return cfg


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    for tool in ("ansible-playbook", "ip", "unshare", "ssh-keygen"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run 'make setup' (openssh-server, ansible-core)")
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("/usr/sbin/sshd is missing: run 'make setup' (openssh-server)")
    with make_fleet(tmp_path_factory.mktemp("fleet")) as made:
        yield made


@contextlib.contextmanager
def make_fleet(base: Path) -> Iterator[Fleet]:
    """The test hosts and an inventory for them (also used by bench/bench_watch.py)."""
    tag = f"{os.getpid() % 10000}"
    subnet = 200 + os.getpid() % 50
    hosts = [
        TestHost(f"fleet-{i}", f"ecapf{tag}n{i}", f"10.{subnet}.{i}.2", base / f"fleet-{i}")
        for i in range(1, HOSTS + 1)
    ]
    made_run_sshd = not Path("/run/sshd").exists()
    created: list[TestHost] = []
    try:
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "id_ed25519"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key"))
        shutil.copy(base / "id_ed25519.pub", base / "authorized_keys")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        (base / "cp").mkdir()
        for i, h in enumerate(hosts, start=1):
            h.root.mkdir()
            _run("ip", "netns", "add", h.netns)
            created.append(h)
            outside, inside = f"vf{tag}o{i}", f"vf{tag}i{i}"
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", h.netns)
            _run("ip", "addr", "add", f"10.{subnet}.{i}.1/30", "dev", outside)
            _run("ip", "link", "set", outside, "up")
            for cmd in (
                ("ip", "addr", "add", f"{h.address}/30", "dev", inside),
                ("ip", "link", "set", inside, "up"),
                ("ip", "link", "set", "lo", "up"),
            ):
                _run("ip", "netns", "exec", h.netns, *cmd)
            cfg = _sshd_config(h, base)
            # own UTS namespace: its own host name, then sshd (exec: the pid is sshd's)
            script = 'hostname "$0" && exec /usr/sbin/sshd -D -e -f "$1"'
            argv = ["ip", "netns", "exec", h.netns, "unshare", "--uts", "--", "sh", "-c", script]
            h.sshd = subprocess.Popen(
                [*argv, h.name, str(cfg)],
                stdout=subprocess.DEVNULL,
                stderr=open(h.root / "sshd.log", "w"),  # noqa: SIM115 (closed with the process)
            )
        for h in hosts:
            _wait_port(h.address)
        # fleet-4 is made unreachable: its sshd goes away before any playbook runs
        lost = hosts[-1]
        lost.sshd.terminate()
        lost.sshd.wait(timeout=10)
        lost.sshd = None

        wheelhouse = base / "wheelhouse"
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, "--no-build-isolation", "-w", str(wheelhouse), str(REPO)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        shutil.rmtree(REPO / "build", ignore_errors=True)
        tar = base / "ecap-wheelhouse.tar"
        _run("tar", "-C", str(wheelhouse), "-cf", str(tar), ".")

        inventory = base / "inventory.ini"
        lines = ["[ecap_hosts]"]
        for h in hosts:
            hv = " ".join(f"{k}={v}" for k, v in h.paths().items())
            lines.append(f"{h.name} ansible_host={h.address} {hv}")
        lines += [
            "",
            "[ecap_hosts:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={base / 'id_ed25519'}",
            "ansible_ssh_common_args='-o UserKnownHostsFile="
            f"{base / 'known_hosts'} -o StrictHostKeyChecking=accept-new -o ConnectTimeout=5'",
            "ansible_python_interpreter=/usr/bin/python3",
            # one kernel and one systemd-less machine under all test hosts: files are
            # written per host, nothing is loaded into the shared kernel (see README)
            "ecap_harden_activate=false",
            "ecap_watch_manage_service=false",
        ]
        inventory.write_text("\n".join(lines) + "\n")
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_LOCAL_TEMP": str(base / "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible-ecap-test",
            # one SSH connection per host for all tasks; closed at teardown (ssh -O exit)
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s "
            f"-o ControlPath={base / 'cp'}/%C",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        yield Fleet(base, hosts, inventory, tar, env)
    finally:
        for h in hosts:  # the ControlPersist masters first, while their sshd is there
            subprocess.run(
                ["ssh", "-O", "exit", "-o", f"ControlPath={base / 'cp'}/%C",
                 f"root@{h.address}"],
                capture_output=True,
                timeout=30,
            )  # fmt: skip
        for h in hosts:
            if h.sshd is not None and h.sshd.poll() is None:
                h.sshd.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.sshd.wait(timeout=10)
        for h in created:
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
        for key in ("id_ed25519", "id_ed25519.pub", "host_key", "host_key.pub", "authorized_keys"):
            with contextlib.suppress(FileNotFoundError):
                (base / key).unlink()
        shutil.rmtree("/tmp/.ansible-ecap-test", ignore_errors=True)
        if made_run_sshd:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()
