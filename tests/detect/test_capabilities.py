"""Unit tests: recorded instruction streams decoded into capabilities, and the rule table.

The fixtures in ``fixtures/xlated`` are translated instructions of real programs
(bcc sniffers and counters, a TC tap, hand-assembled programs), recorded from
this kernel by ``fixtures/record_xlated.py`` together with the kernel function
name behind each call target. Tampering programs cannot be loaded on these
machines (``bpf_probe_write_user`` and ``bpf_override_return`` are refused), so
their streams are assembled here with the same encoding.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ecap.detect import capabilities as caps
from ecap.detect import classify, insns, judge

XLATED = Path(__file__).parent / "fixtures" / "xlated"


def load(name: str) -> tuple[dict, insns.Decoded, list[str]]:
    fixture = json.loads((XLATED / f"{name}.json").read_text())
    decoded = insns.decode(bytes.fromhex(fixture["insns_hex"]))
    names = [fixture["call_names"][str(off)] for off in decoded.calls]
    return fixture, decoded, names


def capabilities_of(name: str) -> tuple[str, ...]:
    fixture, decoded, names = load(name)
    return caps.own(
        prog_type=fixture["program_type"],
        helpers=names,
        map_types=fixture["map_types"],
        packet_loads=decoded.packet_loads,
    )


@pytest.mark.parametrize(
    "name,helpers,expected",
    [
        (
            "bcc-evp-sniffer",
            {"bpf_probe_read_user", "bpf_perf_event_output"},
            {caps.READ_USER, caps.OUTPUT, caps.WRITE_MAPS},
        ),
        ("bcc-evp-counter", {"htab_map_update_elem"}, {caps.WRITE_MAPS}),
        (
            "bcc-sys-enter-write-sniffer",
            {"bpf_probe_read_user", "bpf_perf_event_output_tp"},
            {caps.READ_USER, caps.OUTPUT, caps.WRITE_MAPS},
        ),
        ("bcc-tc-packet-tap", {"bpf_skb_event_output"}, {caps.READ_SOCKET, caps.OUTPUT}),
        ("raw-send-signal", {"bpf_send_signal"}, {caps.SEND_SIGNAL}),
        ("raw-ringbuf-sniffer", {"bpf_probe_read_user", "bpf_ringbuf_output"}, {caps.READ_USER, caps.OUTPUT}),
    ],
)  # fmt: skip
def test_recorded_programs_decode_to_their_capabilities(name, helpers, expected):
    _fixture, decoded, names = load(name)
    assert helpers <= set(names)
    assert decoded.hidden_calls == 0 and decoded.insns > 2
    assert set(capabilities_of(name)) == expected


def test_recorded_map_references_carry_map_ids():
    fixture, decoded, _ = load("bcc-evp-sniffer")
    assert len(decoded.maps) == len(fixture["map_types"]) == 2
    assert set(decoded.maps.values()) == {"fd"}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def test_hand_assembled_streams_decode_calls_maps_tail_calls_and_packet_loads():
    stream = (
        _insn(0x18, 1, 1, imm=42) + _insn(0)  # ld_imm64 r1 = map id 42 (pseudo map fd)
        + _insn(0x18, 2, 2, imm=43) + _insn(0, imm=8)  # direct value of map 43
        + _insn(0x85, imm=-4096)  # a helper call
        + _insn(0x85, imm=-4096)  # the same again: one call target
        + _insn(0x85, src=1, imm=5)  # bpf-to-bpf call: not a helper
        + _insn(0x85, imm=insns.TAIL_CALL_IMM)  # bpf_tail_call as the dump spells it
        + _insn(0x30, imm=12)  # LD_ABS: a classic packet load
        + _insn(0x95)
    )  # fmt: skip
    d = insns.decode(stream + b"\x01\x02")  # a torn tail is ignored
    assert d.calls == (-4096,)
    assert d.maps == {42: "fd", 43: "value"}
    assert d.tail_calls and d.packet_loads and d.hidden_calls == 0
    assert d.insns == 10


def test_calls_hidden_by_kptr_restrict_are_counted_not_guessed():
    d = insns.decode(_insn(0x85, imm=0) + _insn(0x95))
    assert d.calls == () and d.hidden_calls == 1


@pytest.mark.parametrize(
    "helpers,expected",
    [
        (["bpf_probe_write_user"], {caps.WRITE_USER}),
        (["bpf_override_return"], {caps.OVERRIDE_RETURN}),
        (["bpf_probe_read_compat_str", "bpf_trace_printk"], {caps.READ_USER, caps.READ_KERNEL, caps.OUTPUT}),
        (["bpf_copy_from_user_task", "bpf_ringbuf_reserve", "bpf_ringbuf_submit"], {caps.READ_USER, caps.OUTPUT}),
        (["bpf_probe_read_kernel_str"], {caps.READ_KERNEL}),
        (["bpf_get_current_pid_tgid", "bpf_ktime_get_ns"], set()),
    ],
)  # fmt: skip
def test_capabilities_from_kernel_function_names(helpers, expected):
    assert (
        set(caps.own(prog_type="kprobe", helpers=helpers, map_types=["perf_event_array"]))
        == expected
    )


def test_tampering_stream_is_critical_wherever_it_hooks():
    """A program calling bpf_probe_write_user: assembled, since these kernels refuse to load it."""
    stream = _insn(0xB7, 3, imm=1) + _insn(0x85, imm=-777) + _insn(0xB7) + _insn(0x95)
    decoded = insns.decode(stream)
    names = {-777: "bpf_probe_write_user"}
    own = caps.own(prog_type="kprobe", helpers=[names[c] for c in decoded.calls], map_types=[])
    assert caps.tampers(own)
    for reach, ptype in (("other", "uprobe"), ("tls", "uprobe"), ("other", "tracepoint")):
        v = judge.judge_hook(reach=reach, probe_type=ptype, caps=own, has_program=True)
        assert (v.severity, v.kind) == ("critical", judge.TAMPERING)


def test_tail_calls_add_their_targets_capabilities():
    own = {1: (), 2: (caps.READ_USER,), 3: (caps.OUTPUT,), 4: None}
    total = caps.with_tail_calls(own, {1: [2], 2: [3, 1]})
    assert total[1] == (caps.READ_USER, caps.OUTPUT) and caps.is_sniffer(total[1])
    assert total[3] == (caps.OUTPUT,)
    assert caps.with_tail_calls(own, {1: [4]})[1] is None  # an unknown target: unknown


SNIFF = (caps.READ_USER, caps.OUTPUT)


@pytest.mark.parametrize(
    "reach,ptype,program_caps,severity",
    [
        ("tls", "uprobe", SNIFF, "critical"),
        ("crypto", "uprobe", SNIFF, "critical"),
        ("io", "uprobe", SNIFF, "high"),
        ("syscall-data", "tracepoint", SNIFF, "high"),
        ("other", "uprobe", SNIFF, "high"),
        ("other", "kprobe", SNIFF, "medium"),
        ("tls", "uprobe", (caps.READ_USER, caps.WRITE_MAPS), "critical"),  # a map is a channel
        ("tls", "uprobe", (caps.READ_USER,), "medium"),  # reads, cannot ship
        ("tls", "uprobe", (caps.OUTPUT,), "medium"),  # ships, reads nothing
        ("tls", "uprobe", (), "medium"),
        ("other", "uprobe", (), "low"),
        ("other", "uprobe", (caps.SEND_SIGNAL,), "high"),
        ("tls", "uprobe", None, "critical"),  # unknown: by name, as before
        ("crypto", "uprobe", None, "high"),
        ("io", "uprobe", None, "medium"),
        ("other", "kprobe", None, "low"),
    ],
)
def test_severity_rule_table(reach, ptype, program_caps, severity):
    v = judge.judge_hook(reach=reach, probe_type=ptype, caps=program_caps, has_program=True)
    assert v.severity == severity and v.report


def test_tracepoints_without_data_reach_are_inventory_only():
    v = judge.judge_hook(reach="other", probe_type="tracepoint", caps=SNIFF, has_program=True)
    assert not v.report
    v = judge.judge_hook(reach="syscall-data", probe_type="tracepoint", caps=(), has_program=True)
    assert not v.report


def test_a_path_game_is_at_least_high():
    v = judge.judge_hook(
        reach="other", probe_type="uprobe", caps=(), has_program=True, path_problem=True
    )
    assert v.severity == "high"


def test_dormant_and_unheld_programs():
    assert judge.dormant_program(SNIFF) == ("high", judge.SNIFFER)
    assert judge.dormant_program((caps.WRITE_USER,))[0] == "critical"
    assert judge.dormant_program(())[0] == "low"
    assert judge.unheld_program(()) == "high"
    assert judge.unheld_program((caps.OVERRIDE_RETURN,)) == "critical"


@pytest.mark.parametrize(
    "function,path,ptype,expected",
    [
        ("SSL_write", "/x/libssl.so.3", "uprobe", "tls"),
        ("EVP_EncryptUpdate", "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "uprobe", "crypto"),
        (None, "/usr/lib/x86_64-linux-gnu/libssl.so.3", "uprobe", "crypto"),
        (None, "/usr/lib/x86_64-linux-gnu/libgnutls.so.30", "uprobe", "crypto"),
        (None, "/usr/lib/x86_64-linux-gnu/libnspr4.so", "uprobe", "crypto"),
        ("EVP_EncryptUpdate", "/usr/bin/node", "uprobe", "crypto"),  # static OpenSSL
        ("crypto/aes.(*aesCipherGCM).Seal", "/srv/app", "uprobe", "crypto"),
        ("__libc_write", "/usr/lib/x86_64-linux-gnu/libc.so.6", "uprobe", "io"),
        ("__send", "/usr/lib/x86_64-linux-gnu/libc.so.6", "uprobe", "io"),
        ("recvmsg", "/usr/lib/x86_64-linux-gnu/libc.so.6", "uprobe", "io"),
        ("internal/poll.(*FD).Write", "/srv/app", "uprobe", "io"),
        ("getppid", "/usr/lib/x86_64-linux-gnu/libc.so.6", "uprobe", "other"),
        ("inflate", "/usr/lib/x86_64-linux-gnu/libz.so.1", "uprobe", "other"),
        ("sys_enter_write", None, "tracepoint", "syscall-data"),
        ("syscalls:sys_exit_recvfrom", None, "tracepoint", "syscall-data"),
        ("sys_enter", None, "raw_tracepoint", "syscall-data"),
        ("sys_enter_connect", None, "tracepoint", "other"),
        ("tcp_sendmsg", None, "kprobe", "syscall-data"),
        ("__x64_sys_write", None, "kprobe", "syscall-data"),
        ("do_sys_open", None, "kprobe", "other"),
    ],
)
def test_reach_classification(function, path, ptype, expected):
    assert classify.reach(function, path, ptype) == expected


def test_hidden_call_targets_leave_capabilities_unknown(monkeypatch):
    """Under kernel.kptr_restrict=2 calls read as 0, or kallsyms shows no addresses."""
    from ecap.detect import kallsyms, programs
    from ecap.detect.model import Map, Program

    stream = _insn(0x85, imm=-4096) + _insn(0x95)
    prog = Program(id=1, type="kprobe", name="p", tag="t", map_ids=(7,))
    monkeypatch.setattr(kallsyms, "resolve", lambda offsets: None)
    (named,) = programs.name_helpers([(prog, insns.decode(stream))])
    assert named.helpers is None
    (hidden,) = programs.name_helpers([(prog, insns.decode(_insn(0x85, imm=0) + _insn(0x95)))])
    assert hidden.helpers is None
    (assessed,) = caps.assess([named], {7: Map(id=7, type="ringbuf", name="m")})
    assert assessed.capabilities is None
    v = judge.judge_hook(reach="tls", probe_type="uprobe", caps=None, has_program=True)
    assert (v.severity, v.kind) == ("critical", judge.UNKNOWN)  # judged by name, as before
