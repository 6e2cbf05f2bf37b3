"""Test (a): a real, authorized ``ecap-audit capture tls`` is reported as an info
finding with operator, reason and expiry — and is gone once the capture stops."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import ecap_cmd
from tests.detect.conftest import findings_of, program_ids, scan_until, stop

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def test_a_authorized_capture_is_info(ecap_env, tls_victim, tmp_path):
    tok = ecap_env.authorize([tls_victim.pid], operator="alice", reason="ticket 7")
    token_file = ecap_env.write_token(tok)
    out = tmp_path / "capture.txt"
    proc = subprocess.Popen(
        [
            ecap_cmd("ecap-audit"),
            "capture",
            "tls",
            "--pid",
            str(tls_victim.pid),
            "--token",
            str(token_file),
            "--output",
            str(out),
        ],
        env=ecap_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        doc = scan_until(
            lambda d: (
                bool(findings_of(d, pid=proc.pid))
                and any(s["status"] != "rejected" for s in d["inventory"]["sessions"])
            )
        )
        found = findings_of(doc, pid=proc.pid)
        assert len(found) == 1, (
            proc.poll(),
            doc["inventory"]["sessions"],
            proc.stderr.read() if proc.poll() is not None else "",
        )
        f = found[0]
        assert f["severity"] == "info", f["evidence"]
        assert f["authorized"] is True
        a = f["authorization"]
        assert (a["operator"], a["reason"]) == ("alice", "ticket 7")
        assert a["expires_at"] > time.time()
        names = {h["function"] for h in f["hooked"]}
        assert {"SSL_write", "SSL_read"} & names or {"SSL_write_ex", "SSL_read_ex"} & names
        assert all(h["class"] in ("tls", "crypto", "other") for h in f["hooked"])
        assert f["owner"]["pid"] == proc.pid
        progs = set(f["programs"])
    finally:
        stop(proc)
    doc = scan_until(lambda d: not progs & program_ids(d))
    assert not findings_of(doc, pid=proc.pid)
    assert doc["inventory"]["sessions"] == []
