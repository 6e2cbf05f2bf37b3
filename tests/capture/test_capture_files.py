"""What a real capture writes: never through a planted link, never over a file
it was not told to replace, and its session file names the journal it writes to."""

from __future__ import annotations

import json
import stat

import pytest

from tests import tls_helpers

pytestmark = [pytest.mark.bpf]

SECRET = b"not the capture's file\n"


def test_force_replaces_a_planted_output_link_not_its_target(
    ecap_env, tls_server, clients, start_capture, tmp_path
):
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    victim.chmod(0o644)
    # start_capture writes to tmp_path/capture-0.jsonl: plant the link there first
    (tmp_path / "capture-0.jsonl").symlink_to(victim)
    client = tls_helpers.python_client(tls_server, "/hello")
    clients.append(client)
    run = start_capture([client.pid], extra=("--force",))
    [session] = [json.loads(p.read_text()) for p in (ecap_env.run_dir / "sessions").glob("*.json")]
    assert session["journal"] == str(ecap_env.journal)
    tls_helpers.release(client)
    assert client.wait(30) == 0
    run.proc.terminate()
    assert run.wait(30) == 0, run.stderr
    assert victim.read_bytes() == SECRET and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not run.output.is_symlink()
    assert stat.S_IMODE(run.output.stat().st_mode) == 0o600
    assert run.records()[0]["type"] == "header"
    [start] = [
        json.loads(line)
        for line in ecap_env.journal.read_text().splitlines()
        if json.loads(line)["event"] == "capture.start"
    ]
    assert start["journal_override"] == str(ecap_env.journal)
