"""The pcapng file both pcapng outputs write, through ``python-pcapng``.

``python-pcapng`` (PyPI ``python-pcapng``, the maintained pure-Python pcapng
reader/writer) lays out the blocks — Section Header, Interface Description,
Enhanced Packet — with their options (``opt_comment``, ``if_name``,
``if_tsresol``, ``epb_flags``) and padding. It has no Decryption Secrets Block
(pcapng 4.7): that is declared here in its own block schema (type 0x0000000A,
secrets type ``TLSK`` = 0x544c534b, the NSS key-log lines), so the library
still does the framing. Packets start at their IP header (LINKTYPE_RAW), time
stamps are nanoseconds.
"""

from __future__ import annotations

import platform
import warnings
from typing import IO

from pcapng import FileWriter, blocks
from pcapng.structs import IntField, OptionsField, PacketBytes

LINKTYPE_RAW = 101
TLS_KEY_LOG = 0x544C534B
EPB_INBOUND, EPB_OUTBOUND = 1, 2
SNAPLEN = 262144


@blocks.register_block
class DecryptionSecrets(blocks.SectionMemberBlock):
    """pcapng Decryption Secrets Block: secrets a reader applies to the packets after it."""

    magic_number = 0x0000000A
    __slots__ = ()
    schema = [  # noqa: RUF012 - python-pcapng's block schema is a class attribute
        ("secrets_type", IntField(32, False), TLS_KEY_LOG),
        ("secrets_length", IntField(32, False), 0),
        ("secrets_data", PacketBytes("secrets_length"), b""),
        ("options", OptionsField([]), None),
    ]


class PcapngFile:
    """One section: interfaces declared as packets need them."""

    def __init__(self, out: IO[bytes], comment: str) -> None:
        self._shb = blocks.SectionHeader(options={
            "shb_userappl": "ecap-audit", "shb_os": f"{platform.system()} {platform.release()}",
            "opt_comment": comment,
        })  # fmt: skip
        self._writer = FileWriter(out, self._shb)
        self._interfaces: dict[str, int] = {}

    def interface(self, name: str) -> int:
        """The interface id for ``name`` (declared on first use)."""
        found = self._interfaces.get(name)
        if found is None:
            with warnings.catch_warnings():
                # python-pcapng declares if_tsresol without a type and says so when
                # it is used; the raw byte (9: nanoseconds) is what the format wants.
                warnings.simplefilter("ignore", DeprecationWarning)
                idb = self._shb.new_member(
                    blocks.InterfaceDescription, link_type=LINKTYPE_RAW, snaplen=SNAPLEN,
                    options={"if_name": name, "if_tsresol": b"\x09"},
                )  # fmt: skip
                self._writer.write_block(idb)
            found = self._interfaces[name] = idb.interface_id
        return found

    def secrets(self, key_log: bytes) -> None:
        block = self._shb.new_member(DecryptionSecrets, secrets_data=key_log,
                                     secrets_length=len(key_log))  # fmt: skip
        self._writer.write_block(block)

    def packet(self, interface: int, ns: int, data: bytes, wire_len: int, *, outbound: bool,
               comment: str) -> None:  # fmt: skip
        """One packet seen at ``ns`` nanoseconds since the epoch."""
        block = self._shb.new_member(
            blocks.EnhancedPacket, interface_id=interface, timestamp_high=ns >> 32,
            timestamp_low=ns & 0xFFFFFFFF, packet_data=data, captured_len=len(data),
            packet_len=wire_len,
            options={"opt_comment": comment,
                     "epb_flags": EPB_OUTBOUND if outbound else EPB_INBOUND},
        )  # fmt: skip
        self._writer.write_block(block)
