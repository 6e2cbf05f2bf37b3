"""Build ecap-detect's in-kernel walker: compile the BPF C and turn it into a loader.

Run by ``make setup`` (``scripts/setup.sh``); needs clang and libbpf's headers and
library at build time only.

Why a *loader* and not the object itself: loading a CO-RE object with libbpf
means parsing the whole vmlinux BTF in user space on every scan (~25 ms here,
more than the scan it would speed up). libbpf's "gen_loader" (what
``bpftool gen skeleton -L`` uses) instead records the load as a small BPF
program of type BPF_PROG_TYPE_SYSCALL; the kernel runs it, applies the CO-RE
relocations against its own BTF, and hands back map and program fds. At run
time ecap then needs nothing but bpf(2) (see ecap.detect.kernel_walk).

Output: ``bpf/<name>.loader`` — one JSON header line (map and program names in
the order the loader context lists them, blob sizes), then the loader's data
blob, then its instructions.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLANGS = ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14")


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
        ("bpf_program__name", ctypes.c_char_p, (p,)),
    ):
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, argtypes
    return lib


def compile_object(source: Path, out: Path) -> None:
    clang = next((c for c in CLANGS if shutil.which(c)), None)
    if clang is None:
        raise SystemExit("build_bpf: no clang found (make setup installs clang-14)")
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, "x86")
    multiarch = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(
        [
            clang,
            "-g",
            "-O2",
            "-target",
            "bpf",
            f"-D__TARGET_ARCH_{arch}",
            "-I",
            multiarch,
            "-c",
            str(source),
            "-o",
            str(out),
        ],
        check=True,
    )


def generate_loader(obj_path: Path) -> bytes:
    lib = _libbpf()
    image = obj_path.read_bytes()
    buf = ctypes.create_string_buffer(image, len(image))
    obj = lib.bpf_object__open_mem(buf, len(image), None)
    if not obj:
        raise SystemExit(f"build_bpf: libbpf could not open {obj_path}")
    try:
        opts = _GenLoaderOpts(sz=ctypes.sizeof(_GenLoaderOpts))
        if lib.bpf_object__gen_loader(obj, ctypes.byref(opts)):
            raise SystemExit("build_bpf: bpf_object__gen_loader failed")
        if lib.bpf_object__load(obj):
            raise SystemExit("build_bpf: generating the loader failed (libbpf said why above)")
        maps, progs = [], []
        m = lib.bpf_object__next_map(obj, None)
        while m:
            maps.append(lib.bpf_map__name(m).decode())
            m = lib.bpf_object__next_map(obj, m)
        p = lib.bpf_object__next_program(obj, None)
        while p:
            progs.append(lib.bpf_program__name(p).decode())
            p = lib.bpf_object__next_program(obj, p)
        if any(name.startswith(".") or "." in name for name in maps):
            # .rodata/.bss maps would need initial values passed in the loader context.
            raise SystemExit(f"build_bpf: global data maps are not supported: {maps}")
        data = ctypes.string_at(opts.data, opts.data_sz)
        insns = ctypes.string_at(opts.insns, opts.insns_sz)
    finally:
        lib.bpf_object__close(obj)
    header = {
        "format": "ecap.bpf-loader/1",
        "maps": maps,
        "programs": progs,
        "data_size": len(data),
        "insns_size": len(insns),
    }
    return json.dumps(header).encode() + b"\n" + data + insns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="BPF C source, e.g. bpf/scan_iter.bpf.c")
    parser.add_argument("output", type=Path, help="loader file to write, e.g. bpf/scan_iter.loader")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "prog.bpf.o"
        compile_object(args.source, obj)
        blob = generate_loader(obj)
    partial = args.output.with_suffix(args.output.suffix + ".tmp")
    partial.write_bytes(blob)
    partial.replace(args.output)
    print(f"build_bpf: wrote {args.output} ({len(blob)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
