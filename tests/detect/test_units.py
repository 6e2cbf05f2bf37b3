"""Unit tests on recorded samples: fdinfo, tracefs, audit log, mountinfo, names."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from ecap.detect import audit_history, audit_rules, classify, holders, pins, posture, tracefs
from ecap.detect.findings import merge_probes
from ecap.detect.model import Probe
from ecap.elf import open_elf
from ecap.gopclntab import GoFuncTable, go_functions
from ecap.procfs import parse_fdinfo

FIX = Path(__file__).parent / "fixtures"


def test_fdinfo_samples_give_ids_and_types():
    prog = parse_fdinfo((FIX / "fdinfo-prog.txt").read_text())
    assert prog["prog_type"] == "2" and prog["prog_id"].isdigit() and len(prog["prog_tag"]) == 16
    m = parse_fdinfo((FIX / "fdinfo-map.txt").read_text())
    assert m["map_type"] == "27" and m["max_entries"] == "65536"
    link = parse_fdinfo((FIX / "fdinfo-link.txt").read_text())
    probe = holders.link_fdinfo_probe(link, pid=4242, fd=7)
    assert probe is not None
    assert probe.type == "uprobe" and probe.target.endswith("libssl.so.3")
    assert probe.offset == 0x35980 and probe.holder_pid == 4242
    assert probe.link_id == int(link["link_id"]) and probe.prog_id == int(link["prog_id"])
    # a perf event fd's fdinfo carries no BPF ids: that is why TASK_FD_QUERY is needed
    perf = parse_fdinfo((FIX / "fdinfo-perf.txt").read_text())
    assert holders.link_fdinfo_probe(perf, pid=1, fd=5) is None
    assert "prog_id" not in perf


def test_uprobe_events_sample():
    events = tracefs.parse_events((FIX / "uprobe_events.txt").read_text(), uprobe=True)
    assert [(e.type, e.group, e.event, e.offset) for e in events] == [
        ("uprobe", "ecapfix", "sslr", 0x35430),
        ("uretprobe", "ecapfix", "sslr_ret", 0x35430),
    ]
    assert all(e.target == "/usr/lib/x86_64-linux-gnu/libssl.so.3" for e in events)
    assert events[1].args == "arg1=+0(%si):string"


def test_kprobe_events_sample():
    events = tracefs.parse_events((FIX / "kprobe_events.txt").read_text(), uprobe=False)
    assert [(e.type, e.event, e.target, e.offset) for e in events] == [
        ("kprobe", "sniff_tcp_sendmsg", "tcp_sendmsg", 0),
        ("kretprobe", "sniff_ret_recv", "tcp_recvmsg", 0),
        ("kprobe", "by_addr", "0xffffffff81234560", 0),
    ]


def test_uprobe_target_with_ref_ctr_offset():
    text = "p:g/e /opt/app/libssl.so:0x0000000000001234(0x10) a=%di b=+0(%si):string\n"
    (e,) = tracefs.parse_events(text, uprobe=True)
    assert (e.target, e.offset, e.args) == ("/opt/app/libssl.so", 0x1234, "a=%di b=+0(%si):string")


def test_audit_log_sample_joins_bpf_to_syscall():
    events = audit_history.read_log(FIX / "audit.log").bpf
    assert [(e.prog_id, e.op) for e in events] == [
        (901, "LOAD"),
        (902, "LOAD"),
        (901, "UNLOAD"),
        (903, "LOAD"),
    ]
    first = events[0]
    assert (first.actor.exe, first.actor.comm, first.actor.pid, first.actor.auid) == (
        "/usr/bin/bpftrace",
        "bpftrace",
        4242,
        1000,
    )
    assert events[1].actor.auid is None  # unset login uid (4294967295)
    assert "evil" in (events[1].actor.comm or "") and "\x1b" not in (events[1].actor.comm or "")
    hist = audit_history.summarize(events, live_ids={902, 903})
    assert [t["prog_id"] for t in hist.transient] == [901]
    assert hist.transient[0]["exe"] == "/usr/bin/bpftrace"


def test_audit_history_reaches_the_scan(tmp_path):
    from ecap.detect.scan import ScanOptions, run_scan

    doc = run_scan(ScanOptions(audit_log=FIX / "audit.log"))
    (f,) = [f for f in doc["findings"] if f["category"] == "load-history"]
    assert any("bpftrace" in e for e in f["evidence"])
    assert 901 in {t["prog_id"] for t in doc["inventory"]["history"]}


def test_bpffs_mountpoints_from_mountinfo():
    text = (FIX / "mountinfo.txt").read_text()
    assert pins.bpffs_mountpoints(text) == ["/sys/fs/bpf"]
    extra = "99 43 0:50 / /var/run/my\\040bpf rw - bpf bpf rw\n"
    assert pins.bpffs_mountpoints(extra) == ["/var/run/my bpf"]


@pytest.mark.parametrize(
    "name,cls",
    [
        ("SSL_write", "tls"),
        ("SSL_read_ex", "tls"),
        ("SSL_do_handshake", "tls"),
        ("gnutls_record_recv", "tls"),
        ("PR_Write", "tls"),
        ("crypto/tls.(*Conn).writeRecordLocked", "tls"),
        ("crypto/tls.(*Config).writeKeyLog", "tls"),
        ("readline", "shell"),
        ("zleread", "shell"),
        ("_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command", "database"),
        ("pg_parse_query", "database"),
        ("exec_simple_query", "database"),
        ("SSL_CTX_new", "other"),
        (None, "other"),
        ("malloc", "other"),
    ],
)
def test_classification(name, cls):
    assert classify.classify(name) == cls


def test_posture_issues_carry_remediation_ids():
    from ecap.remediation import ALL_CONTROL_IDS

    weak = {
        "sysctl": {
            "kernel.unprivileged_bpf_disabled": "0",
            "kernel.perf_event_paranoid": "-1",
            "kernel.kptr_restrict": "0",
            "kernel.yama.ptrace_scope": "0",
            "net.core.bpf_jit_harden": "0",
            "kernel.dmesg_restrict": "0",
        },
        "lockdown": "none",
        "mounts": {"debugfs": ["/sys/kernel/debug"], "tracefs": []},
        "audit": {"enabled": 0},
    }
    found = {i.key: i for i in posture.issues(weak)}
    assert found["kernel.unprivileged_bpf_disabled"].severity == "high"
    assert all(set(i.remediation) <= set(ALL_CONTROL_IDS) for i in found.values())
    strong = {
        "sysctl": {
            "kernel.unprivileged_bpf_disabled": "1",
            "kernel.perf_event_paranoid": "3",
            "kernel.kptr_restrict": "2",
            "kernel.yama.ptrace_scope": "2",
            "net.core.bpf_jit_harden": "2",
            "kernel.dmesg_restrict": "1",
        },
        "lockdown": "confidentiality",
        "mounts": {},
        "audit": {
            "enabled": 1,
            "rules_bpf": True,
            "rules_perf_event_open": True,
            "rules_tracefs_watch": True,
        },
    }
    assert posture.issues(strong) == []


def _recorded_rules() -> list:
    """Rules as the kernel listed them (AUDIT_LIST_RULES), recorded from auditctl's
    -S bpf,perf_event_open (b64), -w uprobe_events, -S all (b32), -S openat dir=/etc."""
    raw = (FIX / "audit_rules.bin").read_bytes()
    rules, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        rules.append(audit_rules.parse_rule(raw[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return rules


def test_audit_rule_parsing():
    rules = _recorded_rules()
    assert [r.paths for r in rules] == [(), ("/sys/kernel/tracing/uprobe_events",), (), ("/etc",)]
    assert rules[0].syscalls == {321, 298} and rules[0].arch == 0xC000003E
    x86_64 = {"arch": 0xC000003E, "bpf_nr": 321, "perf_nr": 298}
    assert audit_rules.rule_coverage(rules, **x86_64) == {
        "rules_bpf": True,
        "rules_perf_event_open": True,
        "rules_tracefs_watch": True,
    }
    # a watch's own syscall mask and another architecture's "-S all" do not count
    assert audit_rules.rule_coverage(rules[1:], **x86_64) == {
        "rules_bpf": False,
        "rules_perf_event_open": False,
        "rules_tracefs_watch": True,
    }
    assert audit_rules.rule_coverage([], **x86_64)["rules_bpf"] is False


def test_merge_keeps_one_probe_per_attachment():
    perf = Probe("perf_event", "uprobe", "/lib/x.so", 0x10, prog_id=5, holder_pid=9, fd=3)
    link = Probe("link", "uprobe", "/lib/x.so", 0x10, prog_id=5, link_id=7)
    # bcc's tracefs fallback: its own event, named after the process holding the perf fd
    bcc = Probe("tracefs", "uprobe", "/lib/x.so", 0x10, event="uprobes/p__lib_x_so_0x10_bcc_9")
    libbpf = Probe("tracefs", "uprobe", "/lib/x.so", 0x10, event="uprobes/libbpf_9_x_so_0x10_0")
    other = Probe("tracefs", "uprobe", "/lib/x.so", 0x20, event="g/e")
    # someone else's disabled event on the very place the BPF program hooks
    hidden = Probe("tracefs", "uprobe", "/lib/x.so", 0x10, event="g/ev19")
    merged = merge_probes([perf], [link], [bcc, libbpf, other, hidden])
    assert [p.event for p in merged] == [None, "g/e", "g/ev19"]
    assert merged[0].link_id == 7 and merged[0].holder_pid == 9 and merged[0].fd == 3


# -- Go .gopclntab: check against the symbol table of a Go binary that still has one --------
def test_gopclntab_agrees_with_symtab(go_tls_binaries):
    image = open_elf(str(go_tls_binaries[0]))
    assert image.has_section(".symtab")
    table = go_functions(image)
    assert table is not None and len(table) > 1000
    names = [
        "crypto/tls.(*Conn).Read",
        "crypto/tls.(*Conn).writeRecordLocked",
        "main.main",
        "runtime.main",
    ]
    syms = image.find_functions(names)
    for name in names:
        fn = table.find(name)
        assert fn is not None, name
        assert fn.entry == syms[name].vaddr
        assert table.function_at(fn.entry + 1).name == name


def test_gopclntab_rejects_garbage():
    with pytest.raises(ValueError):
        GoFuncTable(b"\x00" * 64)
    with pytest.raises(ValueError):
        GoFuncTable(b"\xf1\xff\xff\xff\x00\x00\x01\x03" + b"\x00" * 64)


def test_resolve_survives_hostile_targets(tmp_path):
    """A FIFO or a malformed ELF at a hooked path must not hang or crash the scan."""
    from ecap.detect.resolve import resolve

    fifo = tmp_path / "libssl.so.3"
    os.mkfifo(fifo)
    r = resolve(str(fifo), 0x1000)
    assert r.function is None and "not a regular file" in (r.note or "")
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"\x7fELF\x02\x01\x01" + b"\xff" * 200)
    r = resolve(str(bad), 0x10)
    assert r.function is None and r.cls == "other" and r.note
    real = resolve(
        LIBSSL_PATH, open_elf(LIBSSL_PATH).find_functions(["SSL_read"])["SSL_read"].file_offset
    )
    assert (real.function, real.delta, real.cls) == ("SSL_read", 0, "tls")


LIBSSL_PATH = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
