"""Least privilege, for real: a non-root operator with exactly CAP_BPF, CAP_PERFMON
and CAP_SYS_PTRACE (as a systemd unit's ``AmbientCapabilities=`` or ``capsh
--addamb`` gives them) runs ``doctor`` and captures another user's process."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ecap.capture.schema import validate_lines
from tests import tls_helpers
from tests.capture.conftest import read_stream

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def _least_privileged(command: str) -> list[str]:
    """Run ``command`` as nobody holding exactly CAP_BPF, CAP_PERFMON and
    CAP_SYS_PTRACE as ambient capabilities (what a systemd unit's
    AmbientCapabilities= gives), nothing else."""
    return [
        "capsh",
        "--caps=cap_bpf,cap_perfmon,cap_sys_ptrace,cap_setpcap,cap_setuid,cap_setgid+eip",
        "--keep=1",
        "--user=nobody",
        "--addamb=cap_bpf,cap_perfmon,cap_sys_ptrace",
        "--",
        "-c",
        command,
    ]


def test_least_privileged_operator_doctor_and_capture(ecap_env, tls_server, clients, tmp_path):
    """A non-root user with only CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE: doctor says
    ready, and a capture of another user's (root's) process works, byte for byte."""
    nobody = 65534
    home = Path(tempfile.mkdtemp(prefix="ecap-lp-"))
    try:
        os.chmod(home, 0o755)
        trust = home / "trust"
        shutil.copytree(ecap_env.trust_dir, trust)
        state = home / "state"
        state.mkdir(mode=0o700)
        os.chown(state, nobody, nobody)
        env = dict(ecap_env.env, ECAP_TRUST_DIR=str(trust), ECAP_JOURNAL=str(state / "journal.jsonl"),
                   ECAP_RUN_DIR=str(state / "run"), HOME=str(state))  # fmt: skip
        doctor_run = subprocess.run(_least_privileged("exec ecap-audit doctor"), env=env,
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
        assert doctor_run.returncode == 0, doctor_run.stdout + doctor_run.stderr
        assert "ready to capture" in doctor_run.stdout
        assert "CAP_SYS_ADMIN" not in doctor_run.stdout  # really only the three
        # no CAP_NET_RAW: doctor says keylog/pcapng cannot work, and such a capture is
        # refused at preflight (exit 4), before any token is looked at
        assert "cannot open a packet socket" in doctor_run.stdout
        assert "not here: keylog, pcapng" in doctor_run.stdout
        placeholder = home / "placeholder.jwt"
        placeholder.write_text("not looked at")
        placeholder.chmod(0o644)
        refused = subprocess.run(
            _least_privileged(f"exec ecap-audit capture tls --pid {os.getpid()} --token "
                              f"{placeholder} --format keylog --output {state / 'keys'}"),
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 4, refused.stderr
        assert "packet-capture: cannot open a packet socket" in refused.stderr
        assert not (state / "keys").exists()

        client = tls_helpers.python_client(tls_server, "/hello")  # runs as root
        clients.append(client)
        token = home / "token.jwt"
        token.write_text(ecap_env.authorize([client.pid]))
        token.chmod(0o644)
        output = state / "session.jsonl"
        capture = subprocess.Popen(
            _least_privileged(
                f"exec ecap-audit capture tls --pid {client.pid} --token {token} "
                f"--format jsonl --output {output}"
            ),
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert tls_helpers.wait_for_line(capture.stderr, "Ctrl-C to stop", 60), "not started"
            tls_helpers.release(client)
            assert client.stdout.read() == tls_helpers.HELLO
            client.wait(30)
            assert capture.wait(60) == 0, capture.stderr.read()
        finally:
            tls_helpers.stop_process(capture)
        records = validate_lines(output.read_text().splitlines())
        received, sent = tls_server.transcript()
        assert read_stream(records, "write", client.pid) == received
        assert read_stream(records, "read", client.pid) == sent
        st = output.stat()
        assert st.st_uid == nobody and st.st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(home, ignore_errors=True)
