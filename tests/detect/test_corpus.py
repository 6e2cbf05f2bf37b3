"""Issue 17: sniffers judged by what their programs can do — real programs, real kernel.

The long-lived corpus (bcc programs that avoid the well-known names, and counters
on the same hooks) is started once for the module and scanned once; each test
asserts one rule on that scan. Programs that must be alone (pinned, unheld, path
games, containers, stale sessions) get their own test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecap.detect import document
from ecap.elf import open_elf
from tests.detect.conftest import (
    HERE,
    LIBSSL,
    PY,
    findings_of,
    program_ids,
    read_ready,
    remove_bcc_tracefs_events,
    scan,
    scan_until,
    stop,
)

pytestmark = pytest.mark.bpf

CORPUS = (
    "evp",
    "evp-counter",
    "write-tp",
    "write-tp-counter",
    "ssl-counter",
    "tc",
    "xdp",
    "sockfilter",
)


def start(mode: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, str(HERE / "bcc_corpus.py"), mode, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def corpus() -> Iterator[tuple[dict, dict[str, dict]]]:
    """(scan, mode → the loader's facts) with every corpus program in place."""
    procs = {mode: start(mode) for mode in CORPUS}  # bcc compiles them in parallel
    try:
        facts = {mode: read_ready(p) for mode, p in procs.items()}
        yield scan(walk="procfs"), facts
    finally:
        for p in procs.values():
            stop(p)
            remove_bcc_tracefs_events(p.pid)


def test_evp_encrypt_update_copying_its_input_is_critical(corpus):
    doc, facts = corpus
    (f,) = findings_of(doc, pid=facts["evp"]["pid"])
    assert f["severity"] == "critical"
    assert f["category"] == "plaintext-hook"
    (hooked,) = f["hooked"]
    assert (hooked["function"], hooked["class"]) == ("EVP_EncryptUpdate", "crypto")
    assert {"read-user-memory", "output-to-user"} <= set(f["capabilities"])
    (prog,) = [p for p in doc["inventory"]["programs"] if p["id"] in facts["evp"]["prog_ids"]]
    assert {"bpf_probe_read_user", "bpf_perf_event_output"} <= set(prog["helpers"])
    assert any("calls" in e and "bpf_probe_read_user" in e for e in f["evidence"])


def test_a_counter_on_the_same_hook_is_not_critical(corpus):
    doc, facts = corpus
    (f,) = findings_of(doc, pid=facts["evp-counter"]["pid"])
    assert f["severity"] == "medium"
    assert f["hooked"][0]["judged"] == "counter"
    assert "read-user-memory" not in f["capabilities"]
    (ssl,) = findings_of(doc, pid=facts["ssl-counter"]["pid"])
    assert ssl["severity"] == "medium" and ssl["hooked"][0]["function"] == "SSL_write"


def test_sys_enter_write_copying_buffers_is_found_without_any_uprobe(corpus):
    doc, facts = corpus
    (f,) = findings_of(doc, pid=facts["write-tp"]["pid"])
    assert f["severity"] == "high"  # syscall level: plaintext only where not encrypted
    assert f["category"] == "plaintext-hook"
    (hooked,) = f["hooked"]
    assert (hooked["type"], hooked["function"], hooked["class"]) == (
        "tracepoint",
        "sys_enter_write",
        "syscall-data",
    )
    assert {"read-user-memory", "output-to-user"} <= set(f["capabilities"])


def test_a_counting_tracepoint_is_inventory_not_a_finding(corpus):
    doc, facts = corpus
    assert not findings_of(doc, pid=facts["write-tp-counter"]["pid"])
    ids = set(facts["write-tp-counter"]["prog_ids"])
    assert ids <= program_ids(doc)
    assert any(
        p["type"] == "tracepoint" and p["prog_id"] in ids for p in doc["inventory"]["probes"]
    )


@pytest.mark.parametrize("mode,where", [("tc", "lo (tcx)"), ("xdp", "lo (xdp)")])
def test_tc_and_xdp_programs_copying_packets_are_packet_taps_with_their_interface(
    corpus, mode, where
):
    doc, facts = corpus
    ids = set(facts[mode]["prog_ids"])
    (f,) = [x for x in doc["findings"] if set(x["programs"]) == ids]
    assert f["category"] == "packet-tap" and f["severity"] == "high"
    assert f["interfaces"] == [where]
    assert f["owner"]["pid"] == facts[mode]["pid"]
    assert {"read-socket-data", "output-to-user"} <= set(f["capabilities"])


def test_socket_filter_copying_packets_is_a_packet_tap_on_its_socket_interface(corpus):
    doc, facts = corpus
    ids = set(facts["sockfilter"]["prog_ids"])
    (f,) = [x for x in doc["findings"] if set(x["programs"]) == ids]
    assert f["category"] == "packet-tap" and f["severity"] == "high"
    assert f["interfaces"] == ["lo (packet socket)"]
    assert f["owner"]["pid"] == facts["sockfilter"]["pid"]


def test_capabilities_reach_every_printer(corpus, tmp_path):
    """JSON (schema-valid), terminal and host report all show a program's capabilities."""
    doc, _facts = corpus
    document.validate(json.loads(json.dumps(doc)))
    from io import StringIO

    from ecap.detect import render_term
    from ecap.reports.host import render_host_report

    out = StringIO()
    render_term.render(doc, out, color=False)
    text = out.getvalue()
    assert "reads user memory, outputs to user space" in text
    assert "bpf_probe_read_user" in text  # the inventory's helpers column
    html = render_host_report(doc, tmp_path / "host.html").read_text()
    assert "read-user-memory" in html and "EVP_EncryptUpdate" in html


def test_pinned_sniffer_program_with_no_holder_is_a_dormant_sniffer(private_bpffs):
    pin = str(private_bpffs / "dormant")
    proc = start("pin", pin)
    facts = read_ready(proc)
    proc.wait(timeout=30)
    try:
        doc = scan()
        (f,) = findings_of(doc, pinned=pin)
        assert f["category"] == "pinned-program" and f["severity"] == "high"
        assert f["title"].startswith("Dormant sniffer")
        assert f["programs"] == facts["prog_ids"]
        assert f["owner"]["pins"] == [pin]
        assert any(f"bpftool prog dump xlated pinned {pin}" in e for e in f["evidence"])
        assert any(e.startswith(f"remove: rm {pin}") for e in f["evidence"])
    finally:
        os.unlink(pin)


@pytest.fixture
def ssl_writer() -> Iterator[subprocess.Popen[str]]:
    """A process calling SSL_write_ex in a loop (memory BIOs: no network)."""
    code = (
        "import ssl, time\n"
        "obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(),"
        " server_hostname='x')\n"
        "print('ok', flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        obj.write(b'password=hunter2')\n"
        "    except ssl.SSLError:\n"
        "        pass\n"
        "    time.sleep(0.01)\n"
    )
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout and proc.stdout.readline().strip() == "ok"
    try:
        yield proc
    finally:
        stop(proc)


def test_sniffer_whose_fds_are_in_flight_is_an_unheld_program_seen_firing(ssl_writer):
    proc = start("unheld")
    facts = read_ready(proc)
    proc.wait(timeout=30)
    sleeper = facts["sleeper"]
    try:
        doc = scan()
        (f,) = [x for x in doc["findings"] if x["programs"] == facts["prog_ids"]]
        assert f["category"] == "unheld-program"
        assert f["severity"] == "high"
        assert "held through references the scan cannot see" in f["title"]
        assert any(e.startswith("firing: run count went from") for e in f["evidence"])
        assert {"read-user-memory", "output-to-user"} <= set(f["capabilities"])
        holders = {h["pid"] for h in doc["inventory"]["holders"]}
        assert proc.pid not in holders and sleeper not in holders
    finally:
        os.kill(sleeper, signal.SIGKILL)  # the socket and the fds queued in it go with it
        remove_bcc_tracefs_events(proc.pid)
    scan_until(lambda d: not set(facts["prog_ids"]) & program_ids(d))


def test_path_games_are_judged_by_the_inode_the_kernel_hooked(tmp_path, tls_victim):
    """Attach through a symlink to libssl, re-point it to libz: still SSL_write, critical."""
    link = tmp_path / "innocent.so"
    link.symlink_to(LIBSSL)
    proc = start("symlink", str(link))
    try:
        read_ready(proc)
        decoy = tmp_path / "decoy"
        decoy.symlink_to("/usr/lib/x86_64-linux-gnu/libz.so.1")
        os.replace(decoy, link)
        for walk in ("procfs", "kernel"):
            (f,) = findings_of(scan(walk=walk), pid=proc.pid)
            assert f["severity"] == "critical", walk
            (hooked,) = f["hooked"]
            assert (hooked["function"], hooked["class"]) == ("SSL_write", "tls")
            assert "another file than the inode the kernel hooked" in hooked["path_problem"]
            victims = {v["pid"] for v in f["victims"]}
            assert tls_victim.pid in victims  # libssl's mappers, not libz's
        link.unlink()  # now the path is missing altogether
        (f,) = findings_of(scan(), pid=proc.pid)
        assert f["severity"] == "critical" and f["hooked"][0]["function"] == "SSL_write"
    finally:
        stop(proc)
        remove_bcc_tracefs_events(proc.pid)


def _offset_without_symbol(path: str) -> int:
    """An offset inside libssl's code that no exported symbol covers."""
    image = open_elf(path)
    start = image.find_functions(["SSL_write"])["SSL_write"].file_offset
    for off in range(start - 0x4000, start, 0x10):
        if image.function_at_offset(off) is None:
            return off
    raise AssertionError("every offset near SSL_write is covered by a symbol")


def test_hook_on_an_unexported_libssl_function_is_still_inside_libssl(hook):
    off = _offset_without_symbol(LIBSSL)
    h = hook(f"{LIBSSL}:{off:#x}")
    (f,) = findings_of(scan(), pid=h.pid)
    (hooked,) = f["hooked"]
    assert hooked["function"] is None and hooked["class"] == "crypto"
    assert f["severity"] == "critical"


@pytest.fixture
def container_cgroup() -> Iterator[Path]:
    """A cgroup named like a Docker container's (cgroupfs driver), removed after."""
    cid = "ec" * 32
    base = Path("/sys/fs/cgroup/pids/docker")
    made_base = not base.exists()
    group = base / cid
    group.mkdir(parents=True, exist_ok=True)
    try:
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        if made_base:
            with contextlib.suppress(OSError):
                base.rmdir()


def test_holder_in_another_pid_and_mount_namespace(container_cgroup):
    cmd = [
        "unshare",
        "--pid",
        "--mount",
        "--fork",
        "--kill-child",
        PY,
        str(HERE / "hook_helper.py"),
    ]
    proc = subprocess.Popen(
        [*cmd, f"{LIBSSL}:SSL_write"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    host_pid = 0
    try:
        inner = read_ready(proc)
        assert inner["pid"] == 1  # as its own namespace sees it
        host_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        (container_cgroup / "cgroup.procs").write_text(str(host_pid))
        (f,) = findings_of(scan(), pid=host_pid)
        owner = f["owner"]
        assert owner["ns_pid"] == 1
        assert owner["pid_ns"] != os.readlink("/proc/self/ns/pid")
        assert owner["mnt_ns"] != os.readlink("/proc/self/ns/mnt")
        assert owner["container_id"] == container_cgroup.name
    finally:
        if host_pid:  # the namespace's init: killing it ends the namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(host_pid, signal.SIGKILL)
        stop(proc)


def test_where_the_loot_goes(hook, tmp_path):
    loot = tmp_path / "loot.bin"
    h = hook(f"{LIBSSL}:SSL_write", capture_args=["--listen", "--write-file", str(loot)])
    (f,) = findings_of(scan(), pid=h.pid)
    dest = f["destinations"]
    listening = {(x["address"], x["port"]): x for x in dest["listening"]}
    assert listening[("0.0.0.0", h.facts["port"])]["exposed"] is True
    peers = {c["peer"]: c for c in dest["connections"]}
    out = peers[f"127.0.0.1:{h.facts['port']}"]
    assert out["status"] == "ESTABLISHED" and out["remote"] is False
    assert any(e.startswith("connected tcp ") for e in f["evidence"])
    assert str(loot) in dest["files_written"]
    assert any(e.startswith("LISTENS on tcp 0.0.0.0:") for e in f["evidence"])
    assert f"writes file {loot}" in f["evidence"]


def test_a_killed_capture_leaves_a_stale_session_and_an_unfinished_journal_entry(
    ecap_env, hook, tls_victim
):
    """A stand-in capture (the real gate, capture.start, a session file) killed with SIGKILL."""
    from tests.detect.test_authorization import _as_capture, _register

    tok = ecap_env.authorize([tls_victim.pid])
    sid = "feedfacefeedfacefeedfacefeedface"
    h = hook(f"{LIBSSL}:SSL_write", capture_args=_as_capture(ecap_env, tok, tls_victim.pid, sid))
    _register(
        ecap_env, tok, hook_pid=h.pid, prog_ids=h.prog_ids, victim_pid=tls_victim.pid,
        jti=h.facts["jti"], session_id=sid,
    )  # fmt: skip
    assert h.proc is not None
    h.proc.send_signal(signal.SIGKILL)
    h.proc.wait(timeout=10)
    doc = scan()
    (f,) = [x for x in doc["findings"] if x["category"] == "stale-session"]
    assert str(h.pid) in f["title"] and sid in f["title"]
    assert f["severity"] == "medium"
    verify = ecap_env.run("ecap-audit", "journal", "verify")
    assert verify.returncode == 0, verify.stderr
    assert f"capture session {sid}" in verify.stderr and "no capture.stop" in verify.stderr
    assert "not running" in verify.stderr
    show = ecap_env.run("ecap-audit", "journal", "show")
    assert f"capture session {sid}" in show.stderr
    as_json = json.loads(ecap_env.run("ecap-audit", "journal", "verify", "--json").stdout)
    assert [u["session_id"] for u in as_json["unfinished_sessions"]] == [sid]
