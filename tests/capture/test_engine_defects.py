"""Defects a security tool must not have, each reproduced against real processes.

- user memory that cannot be read is never shipped as data (it used to be: the
  failed read's zero-filled buffer went out as plaintext);
- pre-forked workers share heap addresses, so the same ``SSL*`` names different
  connections in different processes: socket fds are kept per process;
- BoringSSL's ``SSL_write`` runs ``SSL_do_handshake`` inside itself: the nested
  call must not eat the data call's state (the first request used to vanish);
- a target that exits leaves no entries in the capture's maps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecap.capture.schema import validate_lines
from tests import tls_helpers
from tests.capture import kernel_state
from tests.capture.conftest import assert_calls_match, read_stream

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def _events(records: list[dict], pid: int | None = None, direction: str | None = None):
    return [
        r
        for r in records
        if r["type"] == "event"
        and (pid is None or r["pid"] == pid)
        and (direction is None or r["direction"] == direction)
    ]


def _finish(run, *procs) -> list[dict]:
    for proc in procs:
        proc.wait(60)
    assert run.wait(60) == 0, run.stderr
    return validate_lines(run.output.read_text().splitlines())


# ------------------------------------------------------------- unreadable memory

FAULTING_CLIENT = r"""
import mmap, socket, ssl, sys, threading
sys.stdin.readline()
port, size, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
conn.sendall(f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {size * rounds}\r\n\r\n".encode())
buf = mmap.mmap(-1, size)
done = threading.Event()
def drop_pages():
    # Give the pages back to the kernel while SSL_write_ex works on them: by the
    # time the capture's return probe reads the buffer, some are not present.
    while not done.is_set():
        buf.madvise(mmap.MADV_DONTNEED)
dropper = threading.Thread(target=drop_pages)
dropper.start()
for i in range(rounds):
    buf[:] = bytes([i % 250 + 1]) * size
    conn.write(memoryview(buf))
done.set(); dropper.join()
got = 0
while got < size * rounds:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    got += len(chunk)
print(got)
"""


def test_unreadable_user_memory_is_a_counted_gap_never_data(tls_server, clients, start_capture):
    # 1 MiB per SSL_write_ex: the pages it read first wait long enough for the
    # other thread to drop them before the call returns and the probe reads them.
    size, rounds = 1 << 20, 8
    client = tls_helpers._waiting(
        [sys.executable, "-c", FAULTING_CLIENT, str(tls_server.port), str(size), str(rounds)]
    )
    clients.append(client)
    run = start_capture([client.pid], extra=("--max-call-bytes", str(size)))
    tls_helpers.release(client)
    records = _finish(run, client)
    received, _ = tls_server.transcript()
    body_writes = [e for e in _events(records, client.pid, "write") if e["total"] == size]
    assert len(body_writes) == rounds
    totals = assert_calls_match(records, client.pid, "write", received)
    # the race really happened (otherwise this test would prove nothing)
    assert totals["unreadable"] > 0 and records[-1]["unreadable_bytes"] == totals["unreadable"]
    assert "unreadable:" in run.stderr


# ------------------------------------------------------------- pre-forked workers

PREFORK_SERVER = r"""
/* A pre-forking TLS server as apache and nginx are: the master sets everything
 * up, then forks its workers in a tight loop, so every worker starts from the
 * same heap and gets its SSL objects at the same addresses. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_file(ctx, argv[1], SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1) return 2;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof sa;
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 8)) return 3;
    getsockname(lfd, (struct sockaddr *)&sa, &len);
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    pid_t workers[2];
    for (int n = 0; n < 2; n++) {
        workers[n] = fork();
        if (workers[n] == 0) {
            char go[8];
            if (read(0, go, 3) != 3) _exit(4);  /* "go\n": the capture attaches first */
            for (int i = 0; i < n; i++) open("/dev/null", O_RDONLY);  /* another fd */
            struct sockaddr_in peer;
            socklen_t plen = sizeof peer;
            int fd = accept(lfd, (struct sockaddr *)&peer, &plen);
            SSL *ssl = SSL_new(ctx);
            SSL_set_fd(ssl, fd);
            if (SSL_accept(ssl) != 1) _exit(5);
            char req[4096];
            int got = SSL_read(ssl, req, sizeof req - 1);
            if (got <= 0) _exit(6);
            /* Both workers hold their connection (same SSL*) before either ends it. */
            printf("ready %d %d\n", getpid(), fd);
            fflush(stdout);
            if (read(0, go, 3) != 3) _exit(7);
            char body[64];
            int blen = snprintf(body, sizeof body,
                                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nworker%d", n);
            SSL_write(ssl, body, blen);
            SSL_shutdown(ssl);
            SSL_free(ssl);
            char ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
            printf("{\"pid\": %d, \"fd\": %d, \"peer\": \"%s:%d\", \"request_len\": %d}\n",
                   getpid(), fd, ip, ntohs(peer.sin_port), got);
            fflush(stdout);
            _exit(0);
        }
    }
    printf("%d %d\n", workers[0], workers[1]);
    fflush(stdout);
    for (int n = 0; n < 2; n++) waitpid(workers[n], NULL, 0);
    return 0;
}
"""


@pytest.fixture(scope="module")
def prefork_server(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prefork") / "server"
    source = out.with_suffix(".c")
    source.write_text(PREFORK_SERVER)
    subprocess.run(["gcc", "-O1", str(source), "-o", str(out), "-lssl", "-lcrypto"], check=True)
    return out


def test_preforked_workers_sharing_ssl_addresses_keep_their_own_fds(
    tmp_path, start_capture, ecap_env, prefork_server
):
    cert, key = tls_helpers.make_cert(tmp_path)
    server = subprocess.Popen(
        [str(prefork_server), str(cert), str(key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = int(server.stdout.readline())
        workers = [int(p) for p in server.stdout.readline().split()]
        run = start_capture(workers)
        server.stdin.write("go\ngo\n")  # the workers share stdin: 3 bytes each
        server.stdin.flush()
        curls = [
            subprocess.Popen(
                ["curl", "-sSk", f"https://127.0.0.1:{port}/w{n}"], stdout=subprocess.PIPE
            )
            for n in range(2)
        ]
        ready = [server.stdout.readline().split() for _ in workers]
        held = {(int(pid), int(fd)) for _, pid, fd in ready}
        # in the kernel, each worker's SSL* maps to its own socket
        maps = kernel_state.capture_maps(_session_prog_ids(ecap_env, run))
        try:
            in_kernel = {
                (
                    struct.unpack_from("<I", key)[0],
                    struct.unpack_from("<i", maps["conns"].lookup(key))[0],
                )
                for key in maps["conns"].iter_keys()
            }
        finally:
            kernel_state.close_maps(maps)
        assert held <= in_kernel, (held, in_kernel)
        server.stdin.write("go\ngo\n")
        server.stdin.close()
        bodies = sorted(c.communicate(timeout=30)[0] for c in curls)
        assert bodies == [b"worker0", b"worker1"]
        reports = [json.loads(server.stdout.readline()) for _ in workers]
        server.wait(30)
        records = _finish(run)
    finally:
        tls_helpers.stop_process(server)
    conns = {c["pid"]: c for c in records if c["type"] == "connection"}
    assert set(conns) == set(workers)
    # the precondition of the defect: both workers' connections have the same SSL*
    assert conns[workers[0]]["conn"] == conns[workers[1]]["conn"]
    for report in reports:
        conn = conns[report["pid"]]
        assert conn["fd"] == report["fd"] and conn["fd_source"] == "kernel"
        assert conn["peer"] == report["peer"]
        assert conn["end_reason"] == "library ended it"
        request = read_stream(records, "read", report["pid"])
        assert len(request) == report["request_len"] and request.startswith(b"GET /w")
    assert {c["fd"] for c in conns.values()} == {r["fd"] for r in reports}


def _session_prog_ids(ecap_env, run) -> list[int]:
    sessions = list((ecap_env.run_dir / "sessions").glob("*.json"))
    (session,) = [json.loads(p.read_text()) for p in sessions
                  if json.loads(p.read_text())["capture_pid"] == run.proc.pid]  # fmt: skip
    return session["prog_ids"]


# ------------------------------------------------------------- BoringSSL

BORINGSSL_CLIENT = r"""
#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) return 3;
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_connect_state(ssl);
    /* No SSL_connect: BoringSSL's SSL_write runs SSL_do_handshake inside itself. */
    const char *req = "GET /hello HTTP/1.1\r\nHost: x\r\nX-Ecap-Test: boringssl\r\n"
                      "Connection: close\r\n\r\n";
    if (SSL_write(ssl, req, strlen(req)) <= 0) return 4;
    char buf[4096];
    int n;
    while ((n = SSL_read(ssl, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    return 0;
}
"""
BORINGSSL_DIR = "/usr/lib/x86_64-linux-gnu/android"


@pytest.fixture(scope="module")
def boringssl_client(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("boringssl") / "client"
    source = out.with_suffix(".c")
    source.write_text(BORINGSSL_CLIENT)
    subprocess.run(
        ["gcc", "-O1", "-I/usr/include/android", str(source), "-o", str(out),
         f"-L{BORINGSSL_DIR}", "-lssl", "-lcrypto", f"-Wl,-rpath,{BORINGSSL_DIR}"],
        check=True,
    )  # fmt: skip
    return out


def test_boringssl_handshake_inside_ssl_write_keeps_the_first_request(
    tls_server, clients, start_capture, boringssl_client
):
    client = tls_helpers._waiting([str(boringssl_client), str(tls_server.port)])
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release(client)
    assert tls_helpers.HELLO in client.stdout.read()
    records = _finish(run, client)
    header = records[0]["targets"][0]
    assert header["hooked"] == f"{BORINGSSL_DIR}/libssl.so.0"
    received, sent = tls_server.transcript()
    assert read_stream(records, "write", client.pid) == received
    assert b"X-Ecap-Test: boringssl" in received
    assert read_stream(records, "read", client.pid) == sent
    assert records[-1]["deep_calls"] == 0
    assert any(r["type"] == "handshake" for r in records)


# ------------------------------------------------------------- exited targets


LINGERING_CLIENT = r"""
import os, socket, ssl, sys
sys.stdin.readline()
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
conn.sendall(f"GET {sys.argv[2]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
sys.stdout.buffer.write(conn.recv(65536).split(b"\r\n\r\n", 1)[1])
sys.stdout.flush()
sys.stdin.readline()
os._exit(0)  # leaves without freeing its SSL object: only the exit ends it
"""


def test_an_exited_targets_map_entries_are_dropped(tls_server, clients, start_capture, ecap_env):
    leaving = tls_helpers._waiting(
        [sys.executable, "-c", LINGERING_CLIENT, str(tls_server.port), "/hello?who=leaving"]
    )
    staying = tls_helpers.python_client(tls_server, "/hello?who=staying")
    clients += [leaving, staying]
    run = start_capture([leaving.pid, staying.pid])
    maps = kernel_state.capture_maps(_session_prog_ids(ecap_env, run))
    try:
        # (per-thread state is task-local storage, which the kernel frees with the thread)
        per_process = [maps["conns"]]
        assert leaving.stdin is not None
        leaving.stdin.write(b"go\n")
        leaving.stdin.flush()
        assert leaving.stdout.read(len(tls_helpers.HELLO)) == tls_helpers.HELLO
        # while it lives, the kernel side keeps state for it (so the check below can fail)
        assert sum(kernel_state.entries_for_pid(m, leaving.pid) for m in per_process) > 0
        tls_helpers.release(leaving)
        leaving.wait(30)
        deadline = time.monotonic() + 20
        remaining = -1
        while time.monotonic() < deadline:
            remaining = sum(kernel_state.entries_for_pid(m, leaving.pid) for m in per_process)
            if remaining == 0 and f"target {leaving.pid} exited" in run.stderr:
                break
            time.sleep(0.1)
        assert remaining == 0, "the exited target's entries are still in the maps"
        assert kernel_state.entries_for_pid(maps["target_pids"], leaving.pid) == 0
        assert kernel_state.entries_for_pid(maps["target_pids"], staying.pid) == 1
    finally:
        kernel_state.close_maps(maps)
    tls_helpers.release(staying)
    records = _finish(run, staying)
    assert b"who=leaving" in read_stream(records, "write", leaving.pid)
    assert b"who=staying" in read_stream(records, "write", staying.pid)


@pytest.fixture(autouse=True)
def _gcc_present():
    assert shutil.which("gcc"), "make setup installs gcc"
    assert os.path.exists(f"{BORINGSSL_DIR}/libssl.so.0"), (
        "make setup installs android-libboringssl"
    )


# ------------------------------------------------------------- a busy target

BUSY_CLIENT = r"""
import select, socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
n = 0
while not select.select([sys.stdin], [], [], 0.0005)[0]:  # until told to stop
    conn.sendall(b"<%08d>" % n)
    n += 1
    if n == 100:
        print("streaming", flush=True)
print(n, flush=True)
"""


def test_attaching_to_a_target_in_mid_stream_misses_nothing_after_the_attach(
    tls_server, clients, start_capture
):
    """Calls are in flight while the probes go in: a call whose entry was seen but
    not its return must not shift every later call (they used to be dropped as
    'nested too deep' for the rest of the session)."""
    client = tls_helpers._waiting([sys.executable, "-c", BUSY_CLIENT, str(tls_server.port)])
    clients.append(client)
    assert client.stdout.readline() == b"streaming\n"  # well into its stream of writes
    run = start_capture([client.pid])
    time.sleep(1.0)
    tls_helpers.release(client)
    sent = int(client.stdout.readline())
    tls_helpers.stop_process(client)
    records = _finish(run)
    written = read_stream(records, "write", client.pid)
    numbers = [int(m) for m in re.findall(rb"<(\d{8})>", written)]
    assert len(numbers) > 100
    assert numbers == list(range(numbers[0], sent)), "a call after the attach is missing"
    assert records[-1]["deep_calls"] == 0
    first = min(_events(records, client.pid, "write"), key=lambda e: e["message_id"])
    assert first["stream_offset"] == 0
