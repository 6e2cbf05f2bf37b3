"""The capture programs' record format, as Python reads it.

``bpf/capture_abi.h`` is the one definition of record kinds, flags, counter slots,
attach-cookie bits and the structs the kernel side writes. ``scripts/build_bpf.py``
copies the macros (as the C preprocessor expands them) and the struct layouts
(from the object's BTF) into the loader file; this module reads them from there,
so a change to the header changes both sides at the next ``make setup``.

An :class:`Abi` also travels inside a raw session file (``--format raw``), so that
``ecap-audit replay`` decodes the records with the layout they were written with.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Any

from ecap.ebpf.loader import Image, image

RECORD_STRUCT = "ecap_record"
STRUCT_PREFIX = "ecap_"
"""Every ``struct ecap_*`` the object's BTF describes (other than the record) is a
payload of some record kind: a socket's ends, a thread's name, a shell's prompt..."""
HEADER_FIELDS = (
    "ts_ns", "conn", "stream_off", "pid", "tid", "fd", "total", "offset", "len", "kind", "flags",
    "family", "source",
)  # fmt: skip
"""Fields before ``data``, in the order :class:`ecap.capture.records.Record` takes them."""


@dataclass(frozen=True)
class Abi:
    """Constants and struct layouts of one capture object's records."""

    constants: dict[str, int]
    header_format: str
    """``struct`` format of the header fields (``HEADER_FIELDS`` order)."""
    data_offset: int
    struct_formats: dict[str, str] = field(default_factory=dict)
    """Side structs (``ecap_sockinfo``...) → ``struct`` format."""
    offsets: dict[str, int] = field(default_factory=dict)
    """Header field → byte offset in a record (raw mode peeks at ``kind``, ``len``)."""

    def __getattr__(self, name: str) -> int:
        # abi.KIND_WRITE → ECAP_KIND_WRITE: the C names, without repeating the prefix.
        try:
            return self.constants[f"ECAP_{name}"]
        except KeyError:
            raise AttributeError(name) from None

    @functools.cached_property
    def unpack_header(self) -> Any:
        """``struct.Struct.unpack_from`` of the header fields."""
        return struct.Struct(self.header_format).unpack_from

    def struct(self, name: str) -> struct.Struct:
        return _struct(self.struct_formats[name])

    def kind_names(self) -> dict[int, str]:
        """Record kind number → lower-case name (``write``, ``handshake``...)."""
        return {
            value: key[len("ECAP_KIND_") :].lower()
            for key, value in self.constants.items()
            if key.startswith("ECAP_KIND_")
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "constants": self.constants,
            "header_format": self.header_format,
            "header_fields": list(HEADER_FIELDS),
            "data_offset": self.data_offset,
            "structs": self.struct_formats,
            "offsets": self.offsets,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Abi:
        """The ABI recorded in a raw session file (checked: it comes from a file)."""
        try:
            if list(doc["header_fields"]) != list(HEADER_FIELDS):
                raise ValueError("the record header has other fields than this version reads")
            abi = cls(
                {str(k): int(v) for k, v in doc["constants"].items()},
                str(doc["header_format"]),
                int(doc["data_offset"]),
                {str(k): str(v) for k, v in doc["structs"].items()},
                {str(k): int(v) for k, v in doc["offsets"].items()},
            )
            struct.calcsize(abi.header_format)
            for fmt in abi.struct_formats.values():
                struct.calcsize(fmt)
        except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
            raise ValueError(f"the record layout in the file is not usable ({exc})") from None
        return abi


@functools.cache
def _struct(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


def from_image(img: Image) -> Abi:
    """Derive the layouts from the loader's BTF copy of the C structs."""
    layout = img.struct(RECORD_STRUCT)
    missing = [f for f in (*HEADER_FIELDS, "data") if f not in {m[0] for m in layout["members"]}]
    if missing:
        raise RuntimeError(f"struct {RECORD_STRUCT} lacks {missing}: rebuild with make setup")
    offsets = {name: off for name, off, *_ in layout["members"]}
    side = {
        name: img.struct_format(name)
        for name in img.header.get("structs", {})
        if name.startswith(STRUCT_PREFIX) and name != RECORD_STRUCT
    }
    header = img.struct_format(RECORD_STRUCT, HEADER_FIELDS)
    return Abi(img.constants, header, offsets["data"], side, offsets)


@functools.cache
def of(bpf_object: str) -> Abi:
    """The ABI of the installed capture object ``bpf_object`` (e.g. ``tls_rw``)."""
    return from_image(image(bpf_object))
