"""What ecap reads from Go executables (no kernel): the function table in every
build variant, the build info and the calling convention it implies, return
instructions, where g lives, struct layouts from DWARF, and the gotls module's
probes built from all of that.

The oracles are independent of the code under test: the binary's own ``.symtab``,
Go's own disassembler (``go tool objdump``), the Go toolchain's ``go version -m``,
and a full pyelftools walk of the DWARF types unit.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ecap import gobinary
from ecap.capture import abi as abi_mod
from ecap.capture.modules import gotls
from ecap.elf import open_elf
from ecap.errors import UsageError
from ecap.gopclntab import go_functions

HOOKED = [h.function for h in gotls.HOOKS if h.function != "crypto/tls.(*Conn).serverHandshake"]
"""What a client program links (the linker drops serverHandshake from it)."""


def _objdump(binary: Path, function: str) -> list[tuple[int, str]]:
    """(address, instruction) of ``function`` as Go's own disassembler lists them."""
    pattern = "^" + re.escape(function) + "$"
    out = subprocess.run([shutil.which("go") or "go", "tool", "objdump", "-s", pattern,
                          str(binary)], capture_output=True, text=True, check=True).stdout  # fmt: skip
    rows = []
    for line in out.splitlines()[1:]:
        cols = [c.strip() for c in line.split("\t") if c.strip()]  # file:line, address, bytes, insn
        if len(cols) >= 4:
            rows.append((int(cols[1], 16), cols[3]))
    return rows


@pytest.mark.parametrize("variant", ["plain", "stripped", "pie", "stripped-pie"])
def test_every_variant_is_read_the_same_way(variant, gotls_clients):
    binary = gotls_clients[variant]
    image = open_elf(binary)
    table = go_functions(image)
    assert table is not None, "the function table is found in every variant"
    info = gobinary.build_info(image)
    assert info is not None
    toolchain = subprocess.run(["go", "version", "-m", str(binary)], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    assert toolchain.startswith(f"{binary}: {info.version}\n")
    for key, value in info.settings.items():
        assert f"\tbuild\t{key}={value}\n" in toolchain
    assert info.settings["GOARCH"] == "amd64"
    assert ("-ldflags" in info.settings) == ("stripped" in variant)
    assert gobinary.calling_convention(info) == gobinary.REGISTER_ABI  # Debian's Go 1.19
    read = table.find("crypto/tls.(*Conn).Read")
    assert gobinary.prologue_convention(image, read) == gobinary.REGISTER_ABI
    assert gobinary.tls_g_slot(image, table.find("runtime.morestack")) == 1  # fs:-8
    if not variant.startswith("stripped"):  # the symbol table is the oracle
        syms = image.find_functions(HOOKED)
        for name in HOOKED:
            assert table.find(name).entry == syms[name].vaddr, name


@pytest.mark.parametrize("variant", ["plain", "pie"])
def test_return_instructions_match_gos_own_disassembler(variant, gotls_clients):
    """Every RET capstone finds, and only those, is a RET for ``go tool objdump``;
    the entry probe's branch is the JBE right after the compare with g's stack guard."""
    binary = gotls_clients[variant]
    image = open_elf(binary)
    table = go_functions(image)
    for name in HOOKED:
        fn = table.find(name)
        listing = _objdump(binary, name)
        expected = [addr for addr, text in listing if text == "RET"]
        assert expected, name
        found = gobinary.return_offsets(image, fn)
        assert [image.offset_to_vaddr(o) for o in found] == expected, name
        branch = image.offset_to_vaddr(gobinary.stack_check_branch(image, fn))
        at = [addr for addr, _ in listing].index(branch)
        assert listing[at][1].startswith("JBE "), listing[: at + 1]
        assert listing[at - 1][1].startswith("CMPQ") and "0x10(R14)" in listing[at - 1][1]


LAYOUT_ORACLE = """package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"reflect"
)

func field(t reflect.Type, name string) reflect.StructField {
	f, _ := t.FieldByName(name)
	return f
}

func main() {
	conn := reflect.TypeOf((*tls.Conn)(nil)).Elem()
	tcp := reflect.TypeOf((*net.TCPConn)(nil)).Elem()
	nc := field(tcp, "conn").Type
	netfd := field(nc, "fd").Type.Elem()
	pfd := field(netfd, "pfd").Type
	fmt.Println(field(conn, "conn").Offset, field(tcp, "conn").Offset, field(nc, "fd").Offset,
		field(netfd, "pfd").Offset, field(pfd, "Sysfd").Offset)
}
"""


def test_dwarf_layout_is_the_compilers(gotls_clients):
    """The offsets read from DWARF are the ones the compiler used (Go's reflect
    says so from inside a program built by the same toolchain)."""
    from tests.go_programs import build_go

    oracle = build_go(LAYOUT_ORACLE, "layout-oracle")
    printed = subprocess.run([str(oracle)], capture_output=True, text=True, check=True).stdout
    for variant in ("plain", "pie"):
        found = gobinary.struct_offsets(open_elf(gotls_clients[variant]), gotls.FD_PATH)
        assert found is not None
        assert [found[pair] for pair in gotls.FD_PATH] == [int(v) for v in printed.split()]
    assert gobinary.struct_offsets(open_elf(gotls_clients["stripped"]), gotls.FD_PATH) is None


def test_calling_convention_follows_the_release():
    def conv(version: str, **settings: str) -> str | None:
        return gobinary.calling_convention(gobinary.BuildInfo(version, settings))

    assert conv("go1.16.15") == gobinary.STACK_ABI
    assert conv("go1.13") == gobinary.STACK_ABI
    assert conv("go1.17") == gobinary.REGISTER_ABI
    assert conv("go1.17.2", GOEXPERIMENT="noregabi") == gobinary.STACK_ABI
    assert conv("go1.18.1 X:noregabi") == gobinary.STACK_ABI
    assert conv("go1.19.8", GOEXPERIMENT="noregabi") == gobinary.REGISTER_ABI  # gone in 1.19
    assert conv("go1.22.0") == gobinary.REGISTER_ABI
    assert conv("devel go1.23-4f2b1a0 Tue Jan 2 2024") == gobinary.REGISTER_ABI
    assert conv("go1.21.0", GOARCH="arm64") is None
    assert conv("gccgo") is None


def test_build_info_of_go_before_1_18_points_to_its_strings(gotls_clients, tmp_path):
    """Go 1.13-1.17 wrote two pointers to Go strings instead of the strings: the
    same binary with its header rewritten that way must read the same."""
    image = open_elf(gotls_clients["plain"])
    section = image.elffile.get_section_by_name(".go.buildinfo")
    base, offset, size = section["sh_addr"], section["sh_offset"], section["sh_size"]
    new = gobinary.build_info(image)
    version = new.version.encode()
    modinfo = b"\x00" * 16 + b"path\tx\nbuild\tGOARCH=amd64\n" + b"\x00" * 16
    blob = bytearray(section.data())
    blob[15] = 0  # little-endian, pointer format
    headers_at, strings_at = 32, 64
    version_at, modinfo_at = strings_at, strings_at + len(version)
    struct.pack_into("<QQ", blob, 16, base + headers_at, base + headers_at + 16)
    struct.pack_into("<QQQQ", blob, headers_at, base + version_at, len(version),
                     base + modinfo_at, len(modinfo))  # fmt: skip
    blob[version_at : version_at + len(version)] = version
    blob[modinfo_at : modinfo_at + len(modinfo)] = modinfo
    assert modinfo_at + len(modinfo) <= size
    data = bytearray(gotls_clients["plain"].read_bytes())
    data[offset : offset + size] = blob
    old = tmp_path / "old-format"
    old.write_bytes(data)
    info = gobinary.build_info(open_elf(old))
    assert info == gobinary.BuildInfo(new.version, {"GOARCH": "amd64"})


@pytest.mark.parametrize("variant", ["plain", "stripped-pie"])
def test_gotls_probes_and_cookies(variant, gotls_clients):
    binary = gotls_clients[variant]
    image = open_elf(binary)
    table = go_functions(image)
    abi = abi_mod.of("gotls")
    probes, functions = gotls.probes_for(image, table, gobinary.REGISTER_ABI)
    assert set(functions) == set(HOOKED)  # and no serverHandshake: not linked in
    returns = [p for p in probes if p.program.endswith("_return")]
    assert probes[: len(returns)] == returns, "returns are attached before entries"
    assert not any(p.retprobe for p in probes), "never a uretprobe on Go code"
    for name in HOOKED:
        fn = table.find(name)
        rets = {p.offset for p in returns if p.function == name}
        hook = next(h for h in gotls.HOOKS if h.function == name)
        assert rets == (set(gobinary.return_offsets(image, fn)) if hook.at_returns else set())
        (entry,) = [p for p in probes if p.function == name and p not in returns]
        # on the branch of the stack check: a jbe right after a compare with g's guard
        assert entry.offset == functions[name] == gobinary.stack_check_branch(image, fn)
        assert 0 < image.offset_to_vaddr(entry.offset) - fn.entry < 16
        cookie = entry.cookie
        assert not cookie & abi.GO_STACK_ABI
        assert (cookie >> abi.GO_TLS_G_SHIFT) & abi.GO_TLS_G_MASK == 1
        if hook.kind in ("read", "write", "handshake") and variant == "plain":
            assert cookie & abi.GO_FD_LAYOUT
            itab = image.data_addresses(gotls.TCPCONN_ITABS)
            distance = struct.unpack("<i", struct.pack("<I", cookie >> abi.GO_ITAB_SHIFT))[0]
            assert image.offset_to_vaddr(entry.offset) + distance in itab.values()
            assert (cookie >> abi.GO_SYSFD_SHIFT) & abi.GO_SYSFD_MASK == 2  # Sysfd at 16
        else:
            assert not cookie & abi.GO_FD_LAYOUT
    # the stack ABI puts the results' place in the return cookies
    stack_probes, _ = gotls.probes_for(image, table, gobinary.STACK_ABI)
    read_ret = next(p for p in stack_probes if p.function == gotls.READ and "return" in p.program)
    assert read_ret.cookie & abi.GO_STACK_ABI
    assert (read_ret.cookie >> abi.GO_RESULTS_SHIFT) & abi.GO_RESULTS_MASK == 5  # sp + 40


def test_resolve_refuses_what_is_not_go_tls(gotls_clients, go_tls_binaries):
    sleeper = subprocess.Popen(["sleep", "60"])
    client = subprocess.Popen([str(gotls_clients["stripped"])], stdin=subprocess.PIPE)
    try:
        with pytest.raises(UsageError, match=r"\('sleep', /usr/bin/sleep\) is not a Go program"):
            gotls.resolve(sleeper.pid, {})
        assert not gotls.detect(sleeper.pid)
        assert gotls.detect(client.pid)
        target = gotls.resolve(client.pid, {})
        assert target.kind == "executable" and target.version.startswith("go1.")
        assert Path(target.path).samefile(gotls_clients["stripped"])
    finally:
        for proc in (sleeper, client):
            proc.kill()
            proc.wait()
    assert not gotls.detect(client.pid)  # gone
