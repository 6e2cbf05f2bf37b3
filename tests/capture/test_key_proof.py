"""The key verifier on real TLS exchanges (OpenSSL through Python's ssl, in memory):
the secrets OpenSSL logged must be proven against the bytes on the wire; a secret
one bit off, a wrong client random or a record that never came must not be.

No kernel here: the exchange's bytes become TCP segments (as the packet tap would
deliver them) and OpenSSL's own key log supplies the secrets (as the probe would).
The end-to-end tests (``test_wire_outputs.py``) do the same with curl, Python and
node under a real capture; these cover every AEAD family — GCM, ChaCha20-Poly1305,
CCM and CCM_8, TLS 1.2 and 1.3 — in milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecap.capture.connections import Connection
from ecap.capture.events import KEY, PACKET, KeyEvent, SecretEvent
from ecap.capture.wire import net
from ecap.capture.wire.verifier import KeyVerifier
from ecap.ebpf.packet_ring import Packet

HERE = Path(__file__).parent
CLIENT = net.Endpoint.parse("127.0.0.1:40000")
SERVER = net.Endpoint.parse("127.0.0.1:443")
CCM_CONF = """openssl_conf = c
[c]
ssl_conf = s
[s]
system_default = d
[d]
Ciphersuites = {suites}
"""


def _transcript(tmp_path: Path, version: str, ciphers: str | None = None,
                suites13: str | None = None) -> dict:  # fmt: skip
    env = dict(os.environ)
    if suites13:
        conf = tmp_path / "openssl.cnf"
        conf.write_text(CCM_CONF.format(suites=suites13))
        env["OPENSSL_CONF"] = str(conf)
    args = [
        sys.executable,
        str(HERE / "tls_transcript.py"),
        version,
        *([ciphers] if ciphers else []),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=True)
    return json.loads(done.stdout)


def _packets(transcript: dict) -> list[Packet]:
    """The exchange as the tap would see it: SYN, SYN-ACK, then each write in order."""
    seq = {"client": 1000, "server": 5000}
    ends = {"client": (CLIENT, SERVER), "server": (SERVER, CLIENT)}
    out = [
        net.build(CLIENT, SERVER, 999, 0, net.SYN),
        net.build(SERVER, CLIENT, 4999, 1000, net.SYN | net.ACK),
    ]
    for side, hexdata in transcript["wire"]:
        data = bytes.fromhex(hexdata)
        src, dst = ends[side]
        other = "server" if side == "client" else "client"
        for start in range(0, len(data), 1400):  # MSS-sized segments: records span them
            out.append(net.build(src, dst, seq[side] + start, seq[other], net.ACK,
                                 data[start : start + 1400]))  # fmt: skip
        seq[side] += len(data)
    return [Packet(i * 10**9, 1, False, p, len(p)) for i, p in enumerate(out)]


def _secrets(transcript: dict) -> list[SecretEvent]:
    conn = Connection(1, 4242, 0xDEAD, "client", "tls")
    out = []
    for line in transcript["keylog"].splitlines():
        if line.startswith("#") or not line.strip():
            continue
        label, random, secret = line.split()
        out.append(SecretEvent(conn, 1.0, label, bytes.fromhex(random), True,
                               bytes.fromhex(secret), len(secret) // 2))  # fmt: skip
    return out


def _verify(packets: list[Packet], secrets: list[SecretEvent], *, secrets_first: bool = False):
    emitted: list = []
    verifier = KeyVerifier(
        emitted.append, module="tls",
        owner=lambda local, _remote: 4242 if local == CLIENT else None,
        comm=lambda _pid, _conn: "client", connection_for=lambda *_a: None, packets=True,
    )  # fmt: skip
    for item in (secrets + packets) if secrets_first else (packets + secrets):
        (verifier.secret if isinstance(item, SecretEvent) else verifier.packet)(item)
    verifier.finish()
    keys = [e for e in emitted if e.kind == KEY]
    return emitted, keys, verifier


CASES = [
    ("1.3", None, None, "TLS_AES_256_GCM_SHA384"),
    ("1.3", None, "TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256"),
    ("1.3", None, "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_SHA256"),
    ("1.3", None, "TLS_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_8_SHA256"),
    ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", None, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", None, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", None, "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("1.2", "ECDHE-ECDSA-AES256-CCM", None, "ECDHE-ECDSA-AES256-CCM"),
    ("1.2", "ECDHE-ECDSA-AES128-CCM8", None, "ECDHE-ECDSA-AES128-CCM8"),
]


@pytest.mark.parametrize(("version", "ciphers", "suites13", "expect"), CASES,
                         ids=[c[3] for c in CASES])  # fmt: skip
def test_every_secret_openssl_logged_is_proven(tmp_path, version, ciphers, suites13, expect):
    t = _transcript(tmp_path, version, ciphers, suites13)
    assert t["cipher"] == expect
    secrets = _secrets(t)
    emitted, keys, verifier = _verify(_packets(t), secrets)
    labels = {k.label for k in keys}
    if version == "1.3":
        assert labels == {
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0",
            "SERVER_TRAFFIC_SECRET_0",
            "EXPORTER_SECRET",
        }
    else:
        assert labels == {"CLIENT_RANDOM"}
    assert all(k.verified for k in keys), [(k.label, k.reason) for k in keys]
    assert {k.secret for k in keys} == {s.secret for s in secrets}
    # a key-embedding writer gets every key before the first packet of the connection
    kinds = [e.kind for e in emitted]
    assert kinds.index(PACKET) > max(i for i, k in enumerate(kinds) if k == KEY)
    assert kinds.count(PACKET) == len(_packets(t))
    assert verifier.counts.verified == len(keys) and verifier.counts.not_verified == 0
    # the other way round (secrets before their ClientHello is read) proves the same
    _, again, _ = _verify(_packets(t), _secrets(t), secrets_first=True)
    assert sorted((k.label, k.verified) for k in again) == sorted((k.label, True) for k in keys)


@pytest.fixture(scope="module")
def tls13(tmp_path_factory) -> dict:
    return _transcript(tmp_path_factory.mktemp("t13"), "1.3")


@pytest.fixture(scope="module")
def tls12(tmp_path_factory) -> dict:
    return _transcript(tmp_path_factory.mktemp("t12"), "1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")


def _by_label(keys: list[KeyEvent]) -> dict[str, KeyEvent]:
    return {k.label: k for k in keys}


@pytest.mark.parametrize("fixture", ["tls13", "tls12"])
def test_a_secret_one_bit_off_is_not_verified(request, fixture):
    t = request.getfixturevalue(fixture)
    secrets = _secrets(t)
    for s in secrets:
        s.secret = bytes([s.secret[0] ^ 1]) + s.secret[1:]
    _, keys, verifier = _verify(_packets(t), secrets)
    assert keys and not any(k.verified for k in keys)
    assert all(k.secret == b"" for k in keys)  # nothing of a failed secret is passed on
    assert verifier.counts.not_verified == len(keys)
    reasons = {k.reason for k in keys}
    assert "no record of its connection decrypted with it" in reasons


def test_a_wrong_client_random_is_not_verified(tls13):
    secrets = _secrets(tls13)
    for s in secrets:
        s.client_random = bytes(32)
    _, keys, _ = _verify(_packets(tls13), secrets)
    assert len(keys) == 5 and not any(k.verified for k in keys)
    assert {k.reason for k in keys} == {"no ClientHello on the wire carries its client random"}


def test_a_secret_cut_to_the_wrong_length_is_not_verified(tls13):
    secrets = _secrets(tls13)
    for s in secrets:
        s.secret = s.secret[:32]  # SHA-384 suite: 48 bytes
    _, keys, _ = _verify(_packets(tls13), secrets)
    assert not any(k.verified for k in keys)
    assert any("32-byte secret does not fit TLS_AES_256_GCM_SHA384" in k.reason for k in keys)


def test_a_secret_without_its_records_is_not_verified(tls13):
    """Only the packets up to the server's first flight: the client's Finished and
    every application record are missing, so those secrets cannot be proven."""
    packets = _packets(tls13)[:4]
    _, keys, _ = _verify(packets, _secrets(tls13))
    by = _by_label(keys)
    assert by["SERVER_HANDSHAKE_TRAFFIC_SECRET"].verified
    for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"):
        assert not by[label].verified
        assert by[label].reason == "no record of its connection decrypted with it"


def test_a_tls12_secret_on_a_tls13_connection_is_refused(tls13, tls12):
    random = bytes.fromhex(
        next(line.split()[1] for line in tls13["keylog"].splitlines() if line[:1].isalpha())
    )
    master = _secrets(tls12)[0]
    master.client_random = random
    _, keys, _ = _verify(_packets(tls13), [master])
    (key,) = keys
    assert not key.verified and "does not belong to the connection's TLS 1.3" in key.reason


def test_packets_of_a_flow_that_is_not_ours_are_ignored(tls13):
    emitted: list = []
    verifier = KeyVerifier(emitted.append, module="tls", owner=lambda *_: None,
                           comm=lambda *_: "?", connection_for=lambda *_: None, packets=True)  # fmt: skip
    for p in _packets(tls13):
        verifier.packet(p)
    verifier.finish()
    assert emitted == [] and verifier.counts.packets == 0


def test_a_library_without_an_exporter_secret_settles_on_its_traffic_secrets(tls13):
    """Go hands over no EXPORTER_SECRET: its connection's packets go out once the
    four traffic secrets are judged, not after the hold time; a library that does
    derive one is held until it comes (here: until the capture finishes)."""
    secrets = [s for s in _secrets(tls13) if s.label != "EXPORTER_SECRET"]
    settled = {}
    for exporter in (False, True):
        verifier = KeyVerifier(
            [].append, module="gotls", exporter=exporter,
            owner=lambda local, _remote: 4242 if local == CLIENT else None,
            comm=lambda _pid, _conn: "client", connection_for=lambda *_a: None, packets=True,
            clock=lambda: 0.0,
        )  # fmt: skip
        for item in _packets(tls13) + secrets:
            (verifier.secret if isinstance(item, SecretEvent) else verifier.packet)(item)
        verifier.tick()
        (flow,) = verifier.flows.values()
        settled[exporter] = flow.held is None
    assert settled == {False: True, True: False}


def test_a_connection_joined_after_its_handshake_is_not_held(tls13):
    """Attached mid-connection (the common case for a responder): the first record
    seen is not a ClientHello, so no secret can ever be proven for it — its packets
    go out at once instead of waiting out the hold time."""
    late = {**tls13, "wire": [w for w in tls13["wire"] if not w[1].startswith("16")]}
    packets = [p for p in _packets(late) if len(p.data) > 40]  # no SYN: joined after it
    emitted: list = []
    verifier = KeyVerifier(
        emitted.append, module="tls",
        owner=lambda local, _remote: 4242 if local == CLIENT else None,
        comm=lambda _pid, _conn: "client", connection_for=lambda *_a: None, packets=True,
        clock=lambda: 0.0,
    )  # fmt: skip
    verifier.packet(packets[0])
    (flow,) = verifier.flows.values()
    assert flow.tls.joined_late and flow.held is None
    assert [e.kind for e in emitted] == [PACKET]
    # a whole connection seen from its ClientHello is held until its keys are judged
    fresh = KeyVerifier(
        [].append, module="tls", owner=lambda local, _remote: 4242 if local == CLIENT else None,
        comm=lambda *_a: "client", connection_for=lambda *_a: None, packets=True,
        clock=lambda: 0.0,
    )  # fmt: skip
    for p in _packets(tls13)[:3]:
        fresh.packet(p)
    (flow,) = fresh.flows.values()
    assert not flow.tls.joined_late and flow.held is not None
