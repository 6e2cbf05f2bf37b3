"""Run a light-skeleton loader: the kernel creates the maps and loads the programs.

``scripts/build_bpf.py`` turns each ``bpf/<name>.bpf.c`` into ``bpf/<name>.loader``:
a JSON header line, the loader's data blob, its instructions. :func:`load` puts
the blob in an array map, loads the instructions as a BPF_PROG_TYPE_SYSCALL
program and runs it once (BPF_PROG_TEST_RUN); the kernel then creates every map,
applies the CO-RE relocations against its own BTF, loads every program and
writes their fds into the loader context (``struct bpf_loader_ctx`` of libbpf's
``skel_internal.h``), where this module reads them back. Per-load parameters
travel in the same context: a map's ``max_entries`` (the ring size) and the
initial value of the read-only globals (``const volatile`` in the C).

When the kernel refuses (the verifier, a missing capability), the loader is run
again with a log buffer and the error carries the verifier's last words.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecap.ebpf import syscall as sc
from ecap.ebpf.maps import Map
from ecap.errors import EnvironmentNotReady

LOADER_FORMAT = "ecap.bpf-loader/2"
_MAP_TYPE_ARRAY = 2
_PROG_TYPE_SYSCALL = 31
_F_SLEEPABLE = 1 << 4
_CTX_HEADER = 24  # sz, flags, log_level, log_size, log_buf
_MAP_DESC = 16  # map_fd, max_entries, initial_value
_LOG_SIZE = 1 << 20


_INT_CODES = {(1, "u"): "B", (2, "u"): "H", (4, "u"): "I", (8, "u"): "Q",
              (1, "s"): "b", (2, "s"): "h", (4, "s"): "i", (8, "s"): "q"}  # fmt: skip


class LoadError(EnvironmentNotReady):
    """The programs cannot be loaded here; the message says why in one line."""


def loader_dir() -> Path:
    """Where the built loaders live: next to the C sources in the ``ecap.bpf`` package."""
    import ecap.bpf

    return Path(ecap.bpf.__file__).parent


@dataclass(frozen=True)
class Image:
    """A built loader file, parsed."""

    name: str
    header: dict[str, Any]
    data: bytes
    insns: bytes

    @property
    def map_names(self) -> list[str]:
        return [m["name"] for m in self.header["maps"]]

    @property
    def program_sections(self) -> dict[str, str]:
        """Program name → ELF section (``uprobe``, ``raw_tracepoint/sys_enter``...)."""
        return {p["name"]: p["section"] for p in self.header["programs"]}

    @property
    def constants(self) -> dict[str, int]:
        """``ECAP_*`` macros of the C headers the program includes."""
        return dict(self.header.get("constants", {}))

    def struct_format(self, name: str, fields: tuple[str, ...] | None = None) -> str:
        """A little-endian :mod:`struct` format for ``struct <name>``'s members (all, with
        the tail padding, or just ``fields`` in order) — derived from the C, never
        restated in Python. Byte arrays become ``Ns``."""
        layout = self.struct(name)
        members = {m[0]: (m[1], m[2], m[3]) for m in layout["members"]}
        wanted = fields if fields is not None else tuple(members)
        fmt, pos = "<", 0
        for member in wanted:
            offset, size, kind = members[member]
            if offset < pos:
                raise LoadError(f"struct {name}: {member} is not where the order says")
            fmt += f"{offset - pos}x" if offset > pos else ""
            fmt += f"{size}s" if kind == "bytes" else _INT_CODES[(size, kind)]
            pos = offset + size
        if fields is None and layout["size"] > pos:
            fmt += f"{layout['size'] - pos}x"
        return fmt

    def struct(self, name: str) -> dict[str, Any]:
        """The BTF layout of ``struct <name>``: ``{size, members: [[name, off, size, kind]]}``."""
        try:
            return self.header["structs"][name]
        except KeyError:
            raise LoadError(
                f"{self.name}.loader has no struct {name} (rebuild: make setup)"
            ) from None


def read_image(name: str, data: bytes | None = None) -> Image:
    """Parse ``bpf/<name>.loader`` (or the given bytes); LoadError when absent or damaged."""
    if data is None:
        try:
            data = (loader_dir() / f"{name}.loader").read_bytes()
        except OSError:
            raise LoadError(
                f"{name}.loader not built", hint="run 'make setup' (it compiles bpf/*.bpf.c)"
            ) from None
    head, _, rest = data.partition(b"\n")
    damaged = LoadError(f"{name}.loader is damaged", hint="rebuild it with 'make setup'")
    try:
        header = json.loads(head)
        data_size, insns_size = int(header["data_size"]), int(header["insns_size"])
        [m["name"] for m in header["maps"]]
        [p["name"] for p in header["programs"]]
    except (ValueError, KeyError, TypeError):
        raise damaged from None
    if header.get("format") != LOADER_FORMAT or len(rest) != data_size + insns_size:
        raise damaged
    return Image(name, header, rest[:data_size], rest[data_size:])


@functools.cache
def image(name: str) -> Image:
    """The installed loader ``name`` (read once per process)."""
    return read_image(name)


class LoadedObject:
    """The maps and programs one loader run created; close() unloads them all."""

    def __init__(self, image: Image, map_fds: dict[str, int], prog_fds: dict[str, int]) -> None:
        self.image = image
        self.prog_fds = prog_fds
        self.maps = {name: Map(fd, name) for name, fd in map_fds.items()}

    def map(self, name: str) -> Map:
        return self.maps[name]

    def prog_fd(self, name: str) -> int:
        return self.prog_fds[name]

    def prog_ids(self) -> list[int]:
        """Kernel ids of the loaded programs (what ``ecap-detect`` sees)."""
        return sorted(
            struct.unpack_from("<I", _prog_info(fd), 4)[0] for fd in self.prog_fds.values()
        )

    def prog_tags(self) -> dict[str, str]:
        """Program name → the kernel's tag (a hash of its instructions, map references
        zeroed): it names the *code*, whatever the program is called."""
        return {name: _prog_info(fd)[8:16].hex() for name, fd in self.prog_fds.items()}

    def close(self) -> None:
        sc.close_quietly([*self.prog_fds.values(), *(m.fd for m in self.maps.values())])
        self.prog_fds.clear()
        self.maps.clear()

    def __enter__(self) -> LoadedObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prog_info(fd: int) -> bytes:
    """The head of ``struct bpf_prog_info`` (type, id, tag) of a program fd."""
    info = ctypes.create_string_buffer(16)
    a = sc.attr(16)
    struct.pack_into("<IIQ", a, 0, fd, len(info), ctypes.addressof(info))
    sc.bpf(sc.OBJ_GET_INFO_BY_FD, a)
    return info.raw


def load(
    img: Image,
    *,
    max_entries: dict[str, int] | None = None,
    rodata: dict[str, int] | None = None,
) -> LoadedObject:
    """Create the maps and load the programs of one loader image.

    ``max_entries`` overrides map sizes by name; ``rodata`` sets read-only globals
    (little-endian integers of their declared size) before the kernel sees them.
    """
    names = img.map_names
    n_maps, n_progs = len(names), len(img.header["programs"])
    ctx = ctypes.create_string_buffer(_CTX_HEADER + _MAP_DESC * n_maps + 4 * n_progs)
    struct.pack_into("<I", ctx, 0, len(ctx))
    keep: list[ctypes.Array] = []  # buffers whose addresses the kernel reads
    for name, value in (max_entries or {}).items():
        if name not in names:
            raise KeyError(f"{img.name} has no map {name}")
        struct.pack_into("<I", ctx, _CTX_HEADER + _MAP_DESC * names.index(name) + 4, value)
    if rodata:
        keep.append(_rodata_value(img, rodata))
        index = next(i for i, m in enumerate(img.header["maps"]) if m.get("section") == ".rodata")
        struct.pack_into("<Q", ctx, _CTX_HEADER + _MAP_DESC * index + 8, ctypes.addressof(keep[-1]))
    retval = _run(img, ctx, log=None)
    if retval < 0:
        log = ctypes.create_string_buffer(_LOG_SIZE)
        fresh = ctypes.create_string_buffer(ctx.raw, len(ctx))
        struct.pack_into("<IIQ", fresh, 8, 1, _LOG_SIZE, ctypes.addressof(log))
        retry = _run(img, fresh, log=log)
        if retry >= 0:  # a transient failure: use the second run
            ctx = fresh
        else:
            raise LoadError(
                f"the kernel refused the {img.name} programs: {os.strerror(-retval)}"
                + _last_words(log.value),
                hint="run 'ecap-audit doctor'",
            )
    map_fds = {
        name: struct.unpack_from("<i", ctx, _CTX_HEADER + _MAP_DESC * i)[0]
        for i, name in enumerate(names)
    }
    base = _CTX_HEADER + _MAP_DESC * n_maps
    prog_fds = {
        p["name"]: struct.unpack_from("<i", ctx, base + 4 * i)[0]
        for i, p in enumerate(img.header["programs"])
    }
    if min([*map_fds.values(), *prog_fds.values()], default=0) <= 0:
        sc.close_quietly([fd for fd in [*map_fds.values(), *prog_fds.values()] if fd > 0])
        raise LoadError(f"the {img.name} loader returned no programs")
    return LoadedObject(img, map_fds, prog_fds)


def _rodata_value(img: Image, values: dict[str, int]) -> ctypes.Array:
    section = next((m for m in img.header["maps"] if m.get("section") == ".rodata"), None)
    if section is None:
        raise KeyError(f"{img.name} has no read-only globals")
    raw = bytearray(base64.b64decode(section["initial"]))
    layout = img.header.get("rodata", {})
    for name, value in values.items():
        offset, size = layout[name]
        raw[offset : offset + size] = int(value).to_bytes(size, "little", signed=value < 0)
    return ctypes.create_string_buffer(bytes(raw), len(raw))


def _last_words(log: bytes) -> str:
    lines = [ln for ln in log.decode("utf-8", "replace").splitlines() if ln.strip()]
    return f" (verifier: {' / '.join(lines[-2:])[:300]})" if lines else ""


def _run(img: Image, ctx: ctypes.Array, *, log: ctypes.Array | None) -> int:
    """Create the loader map, load the loader program, run it; returns its retval."""
    own: list[int] = []
    try:
        a = sc.attr(72)
        struct.pack_into("<IIII", a, 0, _MAP_TYPE_ARRAY, 4, len(img.data), 1)
        a[28:40] = b"__loader.map"
        map_fd = _bpf(sc.MAP_CREATE, a, img, "create the loader map")
        own.append(map_fd)
        key = ctypes.c_uint32(0)
        blob = ctypes.create_string_buffer(img.data, len(img.data))
        a = sc.attr(32)
        struct.pack_into(
            "<IIQQQ", a, 0, map_fd, 0, ctypes.addressof(key), ctypes.addressof(blob), 0
        )
        _bpf(sc.MAP_UPDATE_ELEM, a, img, "fill the loader map")

        code = ctypes.create_string_buffer(img.insns, len(img.insns))
        license_ = ctypes.create_string_buffer(b"Dual BSD/GPL")
        fd_array = ctypes.c_int32(map_fd)
        a = sc.attr(128)
        struct.pack_into(
            "<IIQQ", a, 0, _PROG_TYPE_SYSCALL, len(img.insns) // 8, ctypes.addressof(code),
            ctypes.addressof(license_),
        )  # fmt: skip
        struct.pack_into("<I", a, 44, _F_SLEEPABLE)
        a[48:61] = b"__loader.prog"
        struct.pack_into("<Q", a, 120, ctypes.addressof(fd_array))
        prog_fd = _bpf(sc.PROG_LOAD, a, img, "load the loader program")
        own.append(prog_fd)

        a = sc.attr(80)
        struct.pack_into("<I", a, 0, prog_fd)
        struct.pack_into("<I", a, 40, len(ctx))
        struct.pack_into("<Q", a, 48, ctypes.addressof(ctx))
        _bpf(sc.PROG_TEST_RUN, a, img, "run the loader program")
        return struct.unpack_from("<i", a, 4)[0]
    finally:
        sc.close_quietly(own)
        del log


def _bpf(cmd: int, a: ctypes.Array, img: Image, what: str) -> int:
    try:
        return sc.bpf(cmd, a)
    except sc.BpfError as exc:
        raise LoadError(
            f"cannot {what} for {img.name}: {exc.strerror}",
            hint="this needs CAP_BPF and CAP_PERFMON (or root); see 'ecap-audit doctor'",
        ) from None
