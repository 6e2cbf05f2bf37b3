"""``ecap-audit capture gotls`` against our own Go HTTPS client, built four ways.

The client (``programs/gotls_client.go``) is built plain, stripped
(``-ldflags=-s -w``), PIE and stripped PIE (``tests/go_programs.py``, cached). The
test server writes down what it received and sent on each connection; a capture
is right when, per connection, the target's write stream is what the server
received and its read stream what the server sent — byte for byte — with the
server's address as the peer. Go's client speaks HTTP/2 when offered; the second
connection is forced to HTTP/1.1.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from ecap.capture.modules import gotls
from ecap.capture.schema import validate_lines
from tests import tls_helpers
from tests.capture.audit_helpers import authorized_finding
from tests.go_programs import VARIANTS

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

BODY = 65536
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _start(binary: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The client, waiting for a line on stdin."""
    return subprocess.Popen(
        [str(binary), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def _run(binary: Path, *args: str) -> bytes:
    """What the client prints with nobody watching."""
    done = subprocess.run([str(binary), *args], input=b"go\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _finish(run, *procs: subprocess.Popen) -> list[dict]:
    for proc in procs:
        proc.wait(60)
    assert run.wait(60) == 0, run.stderr
    records = validate_lines(run.output.read_text().splitlines())
    assert records[-1]["stop_reason"] == "all targets exited"
    assert oct(os.stat(run.output).st_mode & 0o777) == "0o600"
    return records


def _by_connection(records: list[dict]) -> dict[int, dict]:
    """connection id → the bytes it wrote and read (in message order, none missing)
    and the set of (local, peer) its events named."""
    out: dict[int, dict] = {}
    for event in sorted((r for r in records if r["type"] == "event"),
                        key=lambda r: r["message_id"]):  # fmt: skip
        assert event["lost"] == 0 and event["truncated"] == 0 and "unreadable" not in event
        conn = out.setdefault(event["connection_id"], {"write": b"", "read": b"",
                                                       "ends": set()})  # fmt: skip
        # no call missing in between: each starts where the previous one ended
        assert event["stream_offset"] == len(conn[event["direction"]])
        conn[event["direction"]] += base64.b64decode(event["payload_b64"])
        conn["ends"].add((event["local"], event["peer"]))
    return out


def _assert_each_connection_exact(conns: dict[int, dict], server: tls_helpers.TlsServer) -> None:
    """Each captured connection is the server's connection from its local port: the
    same bytes both ways, and the server as the peer."""
    for conn in conns.values():
        ((local, peer),) = conn["ends"]
        assert peer == f"127.0.0.1:{server.port}"
        port = int(local.rsplit(":", 1)[1])
        received, sent = server.transcript(port)
        assert conn["write"] == received, "the request bytes differ from what the server got"
        assert conn["read"] == sent, "the response bytes differ from what the server sent"


def _assert_detector_sees_an_authorized_gotls_capture(capture_pid: int) -> None:
    """ecap-detect names every probe from .gopclntab (inside the function: its
    prologue's branch and its return instructions) and rates the capture as the
    authorized one it is (info)."""
    finding = authorized_finding(capture_pid)
    hooked = {(h["function"], h["class"]) for h in finding["hooked"]}
    assert {("crypto/tls.(*Conn).Read", "tls"), ("crypto/tls.(*Conn).Write", "tls")} <= hooked
    assert len(finding["hooked"]) > 10  # the entries and every RET
    assert {h["note"] for h in finding["hooked"]} == {"named from .gopclntab"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_http2_and_http1_requests_captured_byte_exact(
    variant, gotls_clients, tls_server, start_capture, clients, ecap_env
):
    binary = gotls_clients[variant]
    args = ("requests", f"https://127.0.0.1:{tls_server.port}", str(BODY))
    expected = _run(binary, *args)
    assert expected.count(b" 200 ") == 4 and b"same false" not in expected
    target = _start(binary, *args)
    bystander = _start(binary, *args)  # the same program at the same time, not authorized
    clients += [target, bystander]
    run = start_capture([target.pid], module="gotls")
    if variant == "stripped-pie":  # the hardest to name: no .symtab, relocated
        _assert_detector_sees_an_authorized_gotls_capture(run.proc.pid)
    for proc in (target, bystander):
        tls_helpers.release(proc)
    # the target runs normally under capture: the same output as with nobody watching
    assert target.stdout.read() == expected
    assert bystander.stdout.read() == expected
    records = _finish(run, target, bystander)

    header = records[0]
    (hooked,) = header["targets"]
    assert header["module"] == "gotls" and header["identity"] == "*tls.Conn"
    assert hooked["kind"] == "executable" and hooked["version"].startswith("go1.")
    assert {"crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"} <= set(hooked["functions"])
    events = [r for r in records if r["type"] == "event"]
    assert {e["pid"] for e in events} == {target.pid}, "the bystander must yield nothing"
    assert {e["comm"] for e in events} <= {f"gotls-{variant}"[:15]}

    conns = _by_connection(records)
    assert len(conns) == 2
    _assert_each_connection_exact(conns, tls_server)
    first_writes = sorted(c["write"][: len(H2_PREFACE)] for c in conns.values())
    assert first_writes == sorted([H2_PREFACE, b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1"[:24]])
    assert records[-1]["connections"] == 2
    assert sum(1 for r in records if r["type"] == "handshake") == 2

    # rendered: HTTP/2 with its pseudo-headers, HTTP/1.1 with its request line
    replay = ecap_env.run("ecap-audit", "replay", str(run.output))
    assert replay.returncode == 0, replay.stderr
    text = replay.stdout
    assert "HTTP/2 connection preface" in text
    assert ":method: POST" in text and ":path: /echo" in text and ":path: /hello" in text
    assert "POST /echo HTTP/1.1" in text and "GET /hello HTTP/1.1" in text
    assert tls_helpers.HELLO.decode().strip() in text
    if variant == "plain":  # the session report names the module and what it hooked
        html = run.output.with_suffix(".html")
        report = ecap_env.run("ecap-audit", "report", str(run.output), "--html", str(html))
        assert report.returncode == 0, report.stderr
        page = html.read_text()
        assert "gotls / jsonl" in page and hooked["version"] in page
        assert hooked["hooked"] in page and "crypto/tls.(*Conn).Write" in page


def _moved(stderr: bytes) -> tuple[int, int]:
    """(reads, reads that moved) as the client reports them on stderr."""
    m = re.search(rb"reads (\d+) moved (\d+)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def _assert_one_connection_exact(records: list[dict], server: tls_helpers.TlsServer) -> None:
    conns = _by_connection(records)
    assert len(conns) == 1
    _assert_each_connection_exact(conns, server)


def test_a_read_that_resumes_on_another_thread_is_one_call(
    gotls_clients, tls_server, start_capture, clients
):
    """A Read parks while the response is on its way and the scheduler resumes the
    goroutine on whichever thread is free: the entry and the return probe fire on
    different threads. The client keeps going until it saw that happen."""
    binary = gotls_clients["stripped"]
    target = _start(binary, "pingpong", f"127.0.0.1:{tls_server.port}", "200",
                    env={"GOMAXPROCS": "4"})  # fmt: skip
    clients.append(target)
    run = start_capture([target.pid], module="gotls")
    tls_helpers.release(target)
    assert target.stdout.read().startswith(b"pingpong ")
    reads, moved = _moved(target.stderr.read())
    records = _finish(run, target)
    assert moved >= 1, f"no Read resumed on another thread in {reads} reads"
    _assert_one_connection_exact(records, tls_server)
    assert len({e["tid"] for e in records if e["type"] == "event"}) > 1


def test_stack_growth_reruns_the_entry_and_moves_buffers(
    gotls_clients, tls_server, start_capture, clients
):
    """Writes from fresh goroutines at every stack depth: some Write prologues find
    the stack too small, and runtime.morestack copies it and runs the entry again
    (the count-only probe sees more entries than calls). Reads into buffers on the
    goroutine's stack, which grows inside Read: the buffer moves with the stack.
    GODEBUG=efence=1 makes the runtime unmap every old stack, so a probe that read
    the buffer where it was at entry would get nothing."""
    from tests.count_probe import CallCounter

    binary = gotls_clients["pie"]
    lines = 100
    target = _start(binary, "grow", f"127.0.0.1:{tls_server.port}", str(lines),
                    env={"GODEBUG": "efence=1"})  # fmt: skip
    clients.append(target)
    write_entry = gotls.resolve(target.pid, {}).functions["crypto/tls.(*Conn).Write"]
    with CallCounter(str(binary), [write_entry], target.pid) as entries:
        run = start_capture([target.pid], module="gotls")
        tls_helpers.release(target)
        out = target.stdout.read()
        reads, moved = _moved(target.stderr.read())
        records = _finish(run, target)
        entered = entries.count()
    assert out.startswith(b"grow %d writes, 300083 bytes back" % (lines + 2)), out
    writes = [r for r in records if r["type"] == "event" and r["direction"] == "write"]
    assert len(writes) == lines + 2, "each Write is one call, however often its entry ran"
    assert entered > len(writes), "no Write prologue grew the stack: the case was not made"
    assert moved > 0, f"no Read buffer moved in {reads} reads: the case was not made"
    assert records[-1]["unreadable_bytes"] == 0
    _assert_one_connection_exact(records, tls_server)


@pytest.mark.parametrize(("variant", "through_structs"), [("plain", True), ("stripped", False)])
def test_the_socket_is_read_through_the_structs_when_dwarf_says_where(
    variant, through_structs, gotls_clients, tls_server, clients
):
    """With DWARF (and the *net.TCPConn itab from .symtab) the kernel side reads each
    connection's fd through tls.Conn → net.TCPConn → netFD → poll.FD at the first
    call; a stripped binary has neither, and without the syscall tracepoints (which
    a capture turns on while a socket is unknown) the fd stays unknown."""
    from ecap.capture import modules
    from ecap.capture.kernel import KernelSide
    from ecap.capture.records import Decoder

    binary = gotls_clients[variant]
    target = _start(binary, "requests", f"https://127.0.0.1:{tls_server.port}", "100")
    clients.append(target)
    kernel = KernelSide(modules.get("gotls"))
    try:
        kernel.authorize_pids([target.pid])
        kernel.attach(gotls.resolve(target.pid, {}))  # uprobes only: no syscall tracepoints
        tls_helpers.release(target)
        target.wait(30)
        decode = Decoder(kernel.abi, kernel.abi.struct("ecap_threadinfo"))
        records = [decode(raw) for raw in kernel.ring.drain(1 << 24)]
    finally:
        kernel.close()
    data = [r for r in records if r.kind in (kernel.abi.KIND_WRITE, kernel.abi.KIND_READ)]
    assert len({r.conn for r in data}) == 2
    fds = {r.fd for r in data}
    sockets = [r for r in records if r.kind == kernel.abi.KIND_SOCKET]
    if through_structs:
        assert -1 not in fds and len(fds) == 2
        assert {s.conn for s in sockets} == {r.conn for r in data}  # peers read at once
    else:
        assert fds == {-1} and not sockets


def test_a_process_that_is_not_go_is_refused_in_one_line(ecap_env, sleeper, gotls_clients):
    """Granted, resolved, refused (exit 2): nothing attached, no output file, and the
    journal closes the grant. A token for tls does not grant gotls (exit 3)."""
    from ecap.journal import Journal

    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid], modules=("gotls",)))
    output = ecap_env.root / "never.jsonl"
    proc = ecap_env.run("ecap-audit", "capture", "gotls", "--pid", str(sleeper.pid),
                        "--token", str(token), "--output", str(output))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"process {sleeper.pid} ('sleep', /usr/bin/sleep) is not a Go program" in line
    assert not output.exists()
    events = [e["event"] for e in Journal(ecap_env.journal).read()
              if not e["event"].startswith("journal.")]  # fmt: skip
    assert events == ["gate.granted", "capture.failed"]
    tls_only = ecap_env.write_token(ecap_env.authorize([sleeper.pid]), "tls.jwt")
    proc = ecap_env.run("ecap-audit", "capture", "gotls", "--pid", str(sleeper.pid),
                        "--token", str(tls_only))  # fmt: skip
    assert proc.returncode == 3 and "gotls" in proc.stderr, proc.stderr


def test_auto_captures_a_go_program_and_an_openssl_one_through_two_objects(
    gotls_clients, tls_server, start_capture, clients
):
    """``auto`` picks gotls from the registry for a Go program and tls for a Python
    one: two BPF objects, two rings read in one loop, each connection exact and
    named by its module."""
    url = f"https://127.0.0.1:{tls_server.port}"
    go = _start(gotls_clients["plain"], "requests", url, str(BODY))
    python = tls_helpers.python_client(tls_server, "/hello")
    clients += [go, python]
    tls_helpers.wait_for_tls_mapped(python.pid)
    run = start_capture([go.pid, python.pid], module="auto",
                        token_modules=("auto", "gotls", "tls"))  # fmt: skip
    for proc in (go, python):
        tls_helpers.release(proc)
    assert go.stdout.read().count(b" 200 ") == 4
    assert python.stdout.read() == tls_helpers.HELLO
    records = _finish(run, go, python)
    header = records[0]
    assert sorted(header["modules"]) == ["gotls", "tls"]
    assert {(t["pid"], t["module"]) for t in header["targets"]} == {
        (go.pid, "gotls"), (python.pid, "tls"),
    }  # fmt: skip
    by_module = {}
    for conn in (r for r in records if r["type"] == "connection"):
        by_module.setdefault(conn["module"], set()).add(conn["pid"])
    assert by_module == {"gotls": {go.pid}, "tls": {python.pid}}
    _assert_each_connection_exact(_by_connection(records), tls_server)
