"""The capture programs' record format, as Python reads it.

``bpf/capture_abi.h`` is the one definition of record kinds, flags, counter slots,
attach-cookie bits and ``struct ecap_record``. ``scripts/build_bpf.py`` copies
the macros (as the C preprocessor expands them) and the struct layout (from the
object's BTF) into the loader file; this module reads them from there, so a
change to the header changes both sides at the next ``make setup``.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

from ecap.ebpf.loader import Image, image

RECORD_STRUCT = "ecap_record"
HEADER_FIELDS = (
    "ts_ns", "conn", "stream_off", "pid", "tid", "fd", "total", "offset", "len", "kind", "flags",
    "family",
)  # fmt: skip
"""Fields before ``data``, in the order :class:`ecap.capture.records.Record` takes them."""

_INT_CODES = {(1, "u"): "B", (2, "u"): "H", (4, "u"): "I", (8, "u"): "Q",
              (1, "s"): "b", (2, "s"): "h", (4, "s"): "i", (8, "s"): "q"}  # fmt: skip


@dataclass(frozen=True)
class Abi:
    """Constants and the record header layout of one capture object."""

    constants: dict[str, int]
    unpack_header: Any
    """``struct.Struct.unpack_from`` of the header fields (``HEADER_FIELDS`` order)."""
    data_offset: int
    header_size: int

    def __getattr__(self, name: str) -> int:
        # abi.KIND_WRITE → ECAP_KIND_WRITE: the C names, without repeating the prefix.
        try:
            return self.constants[f"ECAP_{name}"]
        except KeyError:
            raise AttributeError(name) from None

    def kind_names(self) -> dict[int, str]:
        """Record kind number → lower-case name (``write``, ``handshake``...)."""
        return {
            value: key[len("ECAP_KIND_") :].lower()
            for key, value in self.constants.items()
            if key.startswith("ECAP_KIND_")
        }


def struct_reader(img: Image, name: str) -> tuple[struct.Struct, tuple[str, ...]]:
    """A ``struct`` reader for ``struct <name>`` (integers and byte arrays) and its
    field names, from the loader's BTF copy of the layout."""
    layout = img.struct(name)
    fmt, pos, names = "<", 0, []
    for field, offset, size, kind in layout["members"]:
        fmt += f"{offset - pos}x" if offset > pos else ""
        fmt += f"{size}s" if kind == "bytes" else _INT_CODES[(size, kind)]
        names.append(field)
        pos = offset + size
    fmt += f"{layout['size'] - pos}x" if layout["size"] > pos else ""
    return struct.Struct(fmt), tuple(names)


def from_image(img: Image) -> Abi:
    """Derive the record layout from the loader's BTF copy of ``struct ecap_record``."""
    layout = img.struct(RECORD_STRUCT)
    members = {name: (offset, size, kind) for name, offset, size, kind in layout["members"]}
    missing = [f for f in (*HEADER_FIELDS, "data") if f not in members]
    if missing:
        raise RuntimeError(f"struct {RECORD_STRUCT} lacks {missing}: rebuild with make setup")
    fmt, pos = "<", 0
    for name in HEADER_FIELDS:
        offset, size, kind = members[name]
        if offset < pos:
            raise RuntimeError(f"struct {RECORD_STRUCT} fields are not in the expected order")
        fmt += f"{offset - pos}x" if offset > pos else ""
        fmt += f"{size}s" if kind == "bytes" else _INT_CODES[(size, kind)]
        pos = offset + size
    data_offset = members["data"][0]
    return Abi(img.constants, struct.Struct(fmt).unpack_from, data_offset, data_offset)


@functools.cache
def of(bpf_object: str) -> Abi:
    """The ABI of the installed capture object ``bpf_object`` (e.g. ``tls_rw``)."""
    return from_image(image(bpf_object))
