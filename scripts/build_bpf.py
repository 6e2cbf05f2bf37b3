"""Build ecap's BPF programs: compile the C and turn each object into a loader.

Run by ``make setup`` (``scripts/setup.sh``) for every ``bpf/*.bpf.c``; needs clang,
libbpf and bpftool at build time only.

Why a *loader* and not the object itself: loading a CO-RE object with libbpf
means parsing the whole vmlinux BTF in user space on every run (~25 ms here) and
a library at run time. libbpf's "gen_loader" (what ``bpftool gen skeleton -L``
uses) instead records the load as a small BPF program of type
BPF_PROG_TYPE_SYSCALL; the kernel runs it, applies the CO-RE relocations against
its own BTF, and hands back map and program fds. At run time ecap then needs
nothing but bpf(2) (see ``ecap.ebpf.loader``), and no compiler: the capture
starts in milliseconds and needs only CAP_BPF + CAP_PERFMON.

Output: ``bpf/<name>.loader`` — one JSON header line, then the loader's data blob,
then its instructions. The header names the maps and programs in the order the
loader context lists them and, so that Python never restates a C definition:

- ``programs`` with their section (``uprobe``, ``uretprobe``, ``raw_tracepoint/X``);
- ``rodata``: the read-only globals (offset, size) and their default bytes, which
  the caller may override at load time;
- ``structs``: the layout of every ``struct ecap_*`` from the object's BTF;
- ``constants``: every ``ECAP_*`` integer macro of the local headers the source
  includes (e.g. ``capture_abi.h``), as the C preprocessor expands them.
"""

from __future__ import annotations

import argparse
import ast
import base64
import ctypes
import ctypes.util
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

CLANGS = ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14")
LOADER_FORMAT = "ecap.bpf-loader/2"
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type
UPROBE_SECTIONS = ("uprobe", "uretprobe")
"""ecap attaches every uprobe program through a uprobe_multi link (kernel >= 6.6):
since the 2025 fix that made perf's uprobe PMU require CAP_SYS_ADMIN, it is the
path that works with CAP_BPF + CAP_PERFMON, and one link carries all the offsets
(each with its cookie) of one program in one file. libbpf 1.1 does not know the
``uprobe.multi`` section name, so the C keeps ``uprobe``/``uretprobe`` and the
attach type is set here."""


class _GenLoaderOpts(ctypes.Structure):
    """struct gen_loader_opts from libbpf.h."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("insns", ctypes.c_void_p),
        ("data_sz", ctypes.c_uint32),
        ("insns_sz", ctypes.c_uint32),
    ]


def _libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    p = ctypes.c_void_p
    for name, restype, argtypes in (
        ("bpf_object__open_mem", p, (p, ctypes.c_size_t, p)),
        ("bpf_object__gen_loader", ctypes.c_int, (p, ctypes.POINTER(_GenLoaderOpts))),
        ("bpf_object__load", ctypes.c_int, (p,)),
        ("bpf_object__close", None, (p,)),
        ("bpf_object__next_map", p, (p, p)),
        ("bpf_object__next_program", p, (p, p)),
        ("bpf_map__name", ctypes.c_char_p, (p,)),
        ("bpf_map__value_size", ctypes.c_uint32, (p,)),
        ("bpf_map__max_entries", ctypes.c_uint32, (p,)),
        ("bpf_map__initial_value", p, (p, ctypes.POINTER(ctypes.c_size_t))),
        ("bpf_program__name", ctypes.c_char_p, (p,)),
        ("bpf_program__section_name", ctypes.c_char_p, (p,)),
        ("bpf_program__set_expected_attach_type", ctypes.c_int, (p, ctypes.c_int)),
    ):
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, argtypes
    return lib


def _clang() -> str:
    clang = next((c for c in CLANGS if shutil.which(c)), None)
    if clang is None:
        raise SystemExit("build_bpf: no clang found (make setup installs clang-14)")
    return clang


def compile_object(source: Path, out: Path) -> None:
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, "x86")
    multiarch = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(
        [_clang(), "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{arch}",
         "-I", multiarch, "-I", str(source.parent), "-c", str(source), "-o", str(out)],
        check=True,
    )  # fmt: skip


# -- constants from the local headers ----------------------------------------------

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv, ast.LShift: operator.lshift,
    ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_,
    ast.USub: operator.neg, ast.Invert: operator.invert,
}  # fmt: skip


def _eval_int(expr: str) -> int | None:
    """An integer constant expression as C writes it (no casts, no names), or None."""
    text = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(expr)

    try:
        return ev(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError):
        return None


def header_constants(source: Path) -> dict[str, int]:
    """Every ``ECAP_*`` integer macro of the headers ``source`` includes with quotes."""
    headers = [source.parent / h for h in _INCLUDE_RE.findall(source.read_text())]
    headers = [h for h in headers if h.exists()]
    if not headers:
        return {}
    names: list[str] = []
    for header in headers:
        listing = subprocess.run(
            [_clang(), "-dM", "-E", "-x", "c", str(header)], check=True,
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        names += re.findall(r"^#define (ECAP_\w+) ", listing, re.M)
    probe = "".join(f'#include "{h.name}"\n' for h in headers)
    unique = list(dict.fromkeys(names))
    probe += "".join(f"@{i}@ {n}\n" for i, n in enumerate(unique))
    expanded = subprocess.run(
        [_clang(), "-E", "-P", "-x", "c", "-I", str(source.parent), "-"], input=probe,
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    out: dict[str, int] = {}
    for index, expr in re.findall(r"^@(\d+)@ (.*)$", expanded, re.M):
        value = _eval_int(expr)
        if value is not None:
            out[unique[int(index)]] = value
    return out


# -- layouts from BTF ------------------------------------------------------------------


def struct_layouts(obj_path: Path) -> dict[str, dict]:
    """``struct ecap_*`` layouts: name → {size, members: [[name, offset, size, kind]]}.

    ``kind`` is ``u``/``s`` (unsigned/signed integer) or ``bytes`` (arrays).
    """
    dump = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(obj_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    types = {t["id"]: t for t in json.loads(dump)["types"]}

    def resolve(type_id: int) -> dict:
        t = types[type_id]
        while t["kind"] in ("TYPEDEF", "VOLATILE", "CONST", "RESTRICT"):
            t = types[t["type_id"]]
        return t

    def size_kind(type_id: int) -> tuple[int, str]:
        t = resolve(type_id)
        if t["kind"] == "INT":
            return t["size"], "s" if t.get("encoding") == "SIGNED" else "u"
        if t["kind"] == "ARRAY":
            elem, _ = size_kind(t["type_id"])
            return elem * t["nr_elems"], "bytes"
        if t["kind"] in ("STRUCT", "UNION", "ENUM"):
            return t["size"], "bytes"
        raise SystemExit(f"build_bpf: unsupported member type {t['kind']}")

    out = {}
    for t in types.values():
        if t["kind"] == "STRUCT" and str(t.get("name", "")).startswith("ecap_"):
            members = []
            for m in t["members"]:
                size, kind = size_kind(m["type_id"])
                members.append([m["name"], m["bits_offset"] // 8, size, kind])
            out[t["name"]] = {"size": t["size"], "members": members}
    return out


def rodata_layout(obj_path: Path) -> dict[str, list[int]]:
    """Read-only globals: name → [offset, size] within the .rodata map value."""
    with open(obj_path, "rb") as f:
        elf = ELFFile(f)
        section = elf.get_section_by_name(".rodata")
        symtab = elf.get_section_by_name(".symtab")
        if section is None or symtab is None:
            return {}
        index = elf.get_section_index(".rodata")
        return {
            sym.name: [sym["st_value"], sym["st_size"]]
            for sym in symtab.iter_symbols()
            if sym["st_shndx"] == index and sym["st_info"]["type"] == "STT_OBJECT"
        }


# -- the loader --------------------------------------------------------------------------


def generate_loader(obj_path: Path) -> tuple[dict, bytes, bytes]:
    lib = _libbpf()
    image = obj_path.read_bytes()
    buf = ctypes.create_string_buffer(image, len(image))
    obj = lib.bpf_object__open_mem(buf, len(image), None)
    if not obj:
        raise SystemExit(f"build_bpf: libbpf could not open {obj_path}")
    try:
        maps, progs = [], []
        m = lib.bpf_object__next_map(obj, None)
        while m:
            name = lib.bpf_map__name(m).decode()
            entry = {"name": name, "max_entries": lib.bpf_map__max_entries(m)}
            if "." in name:  # .rodata/.bss/.data: global variables
                size = ctypes.c_size_t(0)
                ptr = lib.bpf_map__initial_value(m, ctypes.byref(size))
                entry["section"] = name[name.index(".") :]
                entry["initial"] = base64.b64encode(ctypes.string_at(ptr, size.value)).decode()
            maps.append(entry)
            m = lib.bpf_object__next_map(obj, m)
        p = lib.bpf_object__next_program(obj, None)
        while p:
            entry = {
                "name": lib.bpf_program__name(p).decode(),
                "section": lib.bpf_program__section_name(p).decode(),
            }
            if entry["section"] in UPROBE_SECTIONS:
                lib.bpf_program__set_expected_attach_type(p, BPF_TRACE_UPROBE_MULTI)
                entry["attach"] = "uprobe_multi"
            progs.append(entry)
            p = lib.bpf_object__next_program(obj, p)
        opts = _GenLoaderOpts(sz=ctypes.sizeof(_GenLoaderOpts))
        if lib.bpf_object__gen_loader(obj, ctypes.byref(opts)):
            raise SystemExit("build_bpf: bpf_object__gen_loader failed")
        if lib.bpf_object__load(obj):
            raise SystemExit("build_bpf: generating the loader failed (libbpf said why above)")
        data = ctypes.string_at(opts.data, opts.data_sz)
        insns = ctypes.string_at(opts.insns, opts.insns_sz)
    finally:
        lib.bpf_object__close(obj)
    return {"maps": maps, "programs": progs}, data, insns


def build(source: Path, output: Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "prog.bpf.o"
        compile_object(source, obj)
        layout, data, insns = generate_loader(obj)
        header = {
            "format": LOADER_FORMAT,
            "source": source.name,
            **layout,
            "rodata": rodata_layout(obj),
            "structs": struct_layouts(obj),
            "constants": header_constants(source),
            "data_size": len(data),
            "insns_size": len(insns),
        }
    return json.dumps(header).encode() + b"\n" + data + insns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="BPF C source, e.g. bpf/tls_rw.bpf.c")
    parser.add_argument("output", type=Path, help="loader file to write, e.g. bpf/tls_rw.loader")
    args = parser.parse_args(argv)
    blob = build(args.source, args.output)
    partial = args.output.with_suffix(args.output.suffix + ".tmp")
    partial.write_bytes(blob)
    partial.replace(args.output)
    print(f"build_bpf: wrote {args.output} ({len(blob)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
