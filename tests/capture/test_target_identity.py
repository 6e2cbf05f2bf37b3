"""The gate's promise holds until the detach: the process the token names, and only
that process, running the program the token names.

- A target that execs another program leaves the capture at once (the kernel
  takes it off the allow-list at exec) and the journal says why; one that
  re-executes its authorized program stays.
- A PID that changes hands between the grant and the attach (the capture stopped
  right after ``gate.granted``, the target killed, its PID given to a new TLS
  client) is refused before anything is attached to the newcomer.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ecap.journal import Journal
from tests import tls_helpers
from tests.capture.conftest import read_stream
from tests.conftest import ecap_cmd

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

EXEC_CLIENT = r"""
import os, ssl, socket, sys
port, then = int(sys.argv[1]), sys.argv[2]
def request(who):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as s:
        s.sendall(f"GET /hello?who={who} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        while s.recv(65536):
            pass
if then != "second":
    sys.stdin.readline()
request("first")
url = f"https://127.0.0.1:{port}/hello?who="
if then == "curl":
    os.execv("/usr/bin/curl", ["curl", "-sk", "--http1.1", "-o", "/dev/null", "-o", "/dev/null", url + "curl1", url + "curl2"])
if then == "self":
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[3], str(port), "second"])
if then == "second":
    request("second")
"""


def _journal(ecap_env) -> list[dict]:
    return [e for e in Journal(ecap_env.journal).read() if not e["event"].startswith("journal.")]


def test_exec_of_another_program_ends_the_targets_capture(tls_server, clients, start_capture,
                                                          ecap_env):  # fmt: skip
    client = tls_helpers._waiting(
        [sys.executable, "-c", EXEC_CLIENT, str(tls_server.port), "curl", EXEC_CLIENT]
    )
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release(client)
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    records = run.records()
    written = read_stream(records, "write", client.pid)
    assert b"who=first" in written
    assert b"who=curl" not in written and b"curl/" not in written
    # curl really made its requests, under the same PID
    received = b"".join(p.read_bytes() for p in tls_server.transcripts.glob("*.in"))
    assert received.count(b"who=curl") == 2
    assert "executed /usr/bin/curl, which the token does not name" in run.stderr
    (exec_entry,) = [e for e in _journal(ecap_env) if e["event"] == "capture.target_exec"]
    assert exec_entry["pid"] == client.pid and exec_entry["kept"] is False
    assert exec_entry["exe"] == "/usr/bin/curl"
    assert records[-1]["stop_reason"] == "all targets exited"
    stop = _journal(ecap_env)[-1]
    assert stop["event"] == "capture.stop" and stop["targets"][0]["pid"] == client.pid


def test_re_exec_of_the_authorized_program_stays_captured(tls_server, clients, start_capture,
                                                          ecap_env):  # fmt: skip
    client = tls_helpers._waiting(
        [sys.executable, "-c", EXEC_CLIENT, str(tls_server.port), "self", EXEC_CLIENT]
    )
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release(client)
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    written = read_stream(run.records(), "write", client.pid)
    assert b"who=first" in written and b"who=second" in written
    (exec_entry,) = [e for e in _journal(ecap_env) if e["event"] == "capture.target_exec"]
    assert exec_entry["kept"] is True


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_pid_reused_between_grant_and_attach_is_refused(tls_server, clients, ecap_env,
                                                         tmp_path):  # fmt: skip
    target = tls_helpers.python_client(tls_server, "/hello?who=authorized")
    clients.append(target)
    pid = target.pid
    token = ecap_env.write_token(ecap_env.authorize([pid]))
    output = tmp_path / "session.jsonl"
    env = dict(ecap_env.env, ECAP_TEST_STOP_AFTER_GRANT="1")
    capture = subprocess.Popen(
        [ecap_cmd("ecap-audit"), "capture", "tls", "--pid", str(pid), "--token", str(token),
         "--format", "jsonl", "--output", str(output)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _stopped(capture.pid):  # the capture paused right after the grant
            assert capture.poll() is None and time.monotonic() < deadline, capture.stderr.read()
            time.sleep(0.01)
        assert [e["event"] for e in _journal(ecap_env)] == ["gate.granted"]
        tls_helpers.stop_process(target)
        newcomer = tls_helpers.spawn_with_pid(
            pid, [sys.executable, "-c", tls_helpers.PYTHON_CLIENT, "GET", str(tls_server.port),
                  "/hello?who=newcomer"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert newcomer is not None, "could not hand the PID to a new process"
        clients.append(newcomer)
        tls_helpers.wait_for_tls_mapped(pid)
        capture.send_signal(signal.SIGCONT)
        _, err = capture.communicate(timeout=60)
    finally:
        if capture.poll() is None:
            capture.send_signal(signal.SIGCONT)
        tls_helpers.stop_process(capture)
    assert capture.returncode == 3, err
    (line,) = err.strip().splitlines()
    assert f"PID {pid} exited after the authorization was granted" in line
    events = _journal(ecap_env)
    assert [e["event"] for e in events] == ["gate.granted", "capture.failed"]
    assert "exited after the authorization" in events[-1]["reason"]
    assert not output.exists()
    # the newcomer goes about its business, uncaptured
    tls_helpers.release(newcomer)
    assert newcomer.stdout.read() == tls_helpers.HELLO
