"""Every shell and database module refuses without a token granting it, before
anything is resolved in the target or attached (journal: refused, never started)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.bpf]


@pytest.mark.parametrize("module", ["bash", "zsh", "mysqld", "postgres"])
def test_module_not_in_the_token_is_refused_before_anything_is_attached(
    module, ecap_env, sleeper, tmp_path
):
    tok = ecap_env.write_token(ecap_env.authorize([sleeper.pid], modules=("tls",)))
    out = tmp_path / "out.jsonl"
    done = ecap_env.run("ecap-audit", "capture", module, "--pid", str(sleeper.pid), "--token",
                        str(tok), "--format", "jsonl", "--output", str(out))  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"module {module!r}" in done.stderr or module in done.stderr
    events = [json.loads(line)["event"] for line in ecap_env.journal.read_text().splitlines()]
    assert "gate.refused" in events and "capture.start" not in events
    assert not out.exists()
