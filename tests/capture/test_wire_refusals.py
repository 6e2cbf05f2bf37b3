"""Keys are granted, located and prepared only where they can be trusted.

A token must name keylog/pcapng explicitly (exit 3 otherwise, before anything is
loaded); a module that cannot give secrets is refused (exit 2, saying why); a
library version whose layout ecap was not proven against fails closed for keys
while plaintext outputs keep working; an operator without a packet socket is
told at preflight (exit 4).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ecap.authz import request
from ecap.capture import cli, modules
from ecap.capture.modules import _keylog_function
from ecap.capture.modules.interface import HookTarget
from ecap.errors import UsageError

DEBIAN_LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
BORINGSSL = Path("/usr/lib/x86_64-linux-gnu/android/libssl.so.0")


def _run_cli(argv: list[str], capsys, monkeypatch, env) -> tuple[int, str]:
    for name, value in env.env.items():
        if name.startswith("ECAP_"):
            monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return int(exit_info.value.code), capsys.readouterr().err


def _journal_events(env) -> list[str]:
    if not env.journal.exists():
        return []
    return [json.loads(line)["event"] for line in env.journal.read_text().splitlines()]


@pytest.mark.parametrize("fmt", [["keylog"], ["pcapng"], ["pcapng", "--plaintext"]])
def test_a_token_without_the_mode_is_refused_before_anything_is_loaded(
    fmt, monkeypatch, capsys, ecap_env, sleeper, tmp_path
):
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))  # text, jsonl only
    out = tmp_path / "out"
    code, err = _run_cli(
        ["capture", "tls", "--pid", str(sleeper.pid), "--token", str(token), "--format", fmt[0],
         *fmt[1:], "--output", str(out)],
        capsys, monkeypatch, ecap_env,
    )  # fmt: skip
    assert code == 3, err
    assert "pcapng" in err or "keylog" in err
    events = _journal_events(ecap_env)
    assert "gate.refused" in events and "capture.start" not in events
    assert not out.exists()


def test_a_request_asks_for_keys_only_by_name(sleeper):
    doc = request.build([sleeper.pid], modules=["tls"], modes=None, reason="r")
    assert not {"keylog", "pcapng"} & set(doc["modes"])
    doc = request.build([sleeper.pid], modules=["tls"], modes=["keylog"], reason="r")
    assert doc["modes"] == ["keylog"]


def test_verify_shows_the_key_modes(ecap_env, sleeper):
    token = ecap_env.write_token(
        ecap_env.authorize([sleeper.pid], modes=("keylog", "pcapng", "text"))
    )
    done = ecap_env.run("ecap-audit", "verify", "--token", str(token), "--mode", "keylog")
    assert done.returncode == 0, done.stderr
    assert "output modes  keylog, pcapng, text" in done.stdout


def test_a_module_without_secrets_is_refused_with_why(monkeypatch, capsys, ecap_env, sleeper):
    """What NSS will say (Debian's NSS keeps secrets in its token, no key logging):
    any module that declares no secrets source is refused before the gate."""
    nss_like = dataclasses.replace(
        modules.get("tls"), name="nsslike", secrets=None, options=(),
        no_secrets="NSS keeps its secrets inside its PKCS#11 token",
    )  # fmt: skip
    registry = {**modules.registry(), "nsslike": nss_like}
    monkeypatch.setattr(modules, "registry", lambda: registry)
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid], modes=("keylog",)))
    code, err = _run_cli(
        ["capture", "nsslike", "--pid", str(sleeper.pid), "--token", str(token), "--format",
         "keylog"],
        capsys, monkeypatch, ecap_env,
    )  # fmt: skip
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "needs TLS secrets, and the nsslike module cannot give them: NSS keeps" in line
    assert "pcapng --plaintext" in line
    assert _journal_events(ecap_env) == []  # refused before the gate
    code, err = _run_cli(
        ["capture", "bash", "--pid", str(sleeper.pid), "--token", str(token), "--format",
         "pcapng"],
        capsys, monkeypatch, ecap_env,
    )  # fmt: skip
    assert code == 2 and "the bash module cannot give them" in err


def test_plaintext_applies_to_pcapng_only(monkeypatch, capsys, ecap_env, sleeper):
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    code, err = _run_cli(
        ["capture", "tls", "--pid", str(sleeper.pid), "--token", str(token), "--plaintext"],
        capsys, monkeypatch, ecap_env,
    )  # fmt: skip
    assert code == 2 and "--plaintext does not apply to --format text" in err


def _target(path: Path, version: str | None) -> HookTarget:
    return HookTarget(1, path, str(path), "library", version, ())


def test_the_key_log_function_is_found_in_a_stripped_libssl():
    """Debian's libssl has no symbol for ssl_log_secret: it is the one function both
    CLIENT_RANDOM and EXPORTER_SECRET are passed to, and it reads the client random
    where SSL_get_client_random does."""
    from ecap.elf import open_elf

    assert not open_elf(DEBIAN_LIBSSL).find_functions(["ssl_log_secret"])
    version = open_elf(DEBIAN_LIBSSL.with_name("libcrypto.so.3")).ssl_version()
    (probe,) = _keylog_function.OPENSSL.probes(_target(DEBIAN_LIBSSL, version), 0)
    assert probe.function == "ssl_log_secret" and probe.program == "secret_enter"
    assert probe.cookie & 0xFFFF == 0x160  # the client random in Debian 3.0's SSL
    (shifted,) = _keylog_function.OPENSSL.probes(_target(DEBIAN_LIBSSL, version), -8)
    assert shifted.cookie == 0x160 | 0xFFF8 << 16 and shifted.offset == probe.offset


@pytest.mark.parametrize(
    ("path", "version", "why"),
    [
        (DEBIAN_LIBSSL, "OpenSSL 3.2.1 30 Jan 2024", "only from versions it was proven against"),
        (DEBIAN_LIBSSL, "OpenSSL 1.1.1w 11 Sep 2023", "only from versions it was proven against"),
        (BORINGSSL, None, "version unknown"),
    ],
)
def test_an_unproven_library_version_fails_closed_for_keys(path, version, why):
    if not path.exists():
        pytest.fail(f"{path} is installed by make setup")
    with pytest.raises(UsageError) as refused:
        _keylog_function.OPENSSL.probes(_target(path, version), 0)
    text = refused.value.one_line()
    assert why in text and "text, jsonl, raw and 'pcapng --plaintext' still work" in text
