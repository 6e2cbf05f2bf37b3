"""Keys are granted, located and prepared only where they can be trusted.

A token must name keylog/pcapng explicitly (exit 3 otherwise, before anything is
loaded); a module that cannot give secrets is refused (exit 2, saying why); a
library version whose layout ecap was not proven against fails closed for keys
while plaintext outputs keep working; an operator without a packet socket is
told at preflight (exit 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecap.authz import request
from ecap.capture import cli
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


@pytest.mark.parametrize("fmt", ["keylog", "pcapng"])
def test_nss_is_refused_keys_with_why(fmt, monkeypatch, capsys, ecap_env, sleeper):
    """Debian's NSS keeps its secrets in its token and logs none: capture nss
    refuses keylog and pcapng (exit 2, saying why) before the gate; and so does any
    module without a secrets source."""
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid], modes=(fmt,),
                                                    modules=("nss", "bash")))  # fmt: skip
    code, err = _run_cli(
        ["capture", "nss", "--pid", str(sleeper.pid), "--token", str(token), "--format", fmt],
        capsys, monkeypatch, ecap_env,
    )  # fmt: skip
    assert code == 2
    (line,) = err.strip().splitlines()
    assert (
        f"--format {fmt} needs TLS secrets, and the nss module cannot give them: NSS keeps" in line
    )
    assert "without key logging" in line and "pcapng --plaintext" in line
    assert _journal_events(ecap_env) == []  # refused before the gate
    code, err = _run_cli(
        ["capture", "bash", "--pid", str(sleeper.pid), "--token", str(token), "--format", fmt],
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


DEBIAN_LIBGNUTLS = Path("/usr/lib/x86_64-linux-gnu/libgnutls.so.30")


def test_the_key_log_function_is_found_in_a_stripped_libgnutls():
    """Debian's libgnutls has no symbol for _gnutls_call_keylog_func: it is the one
    function both CLIENT_RANDOM and EXPORTER_SECRET are passed to; the client random
    is where gnutls_session_get_random reads it."""
    from ecap.capture.modules import gnutls
    from ecap.elf import open_elf

    assert not open_elf(DEBIAN_LIBGNUTLS).find_functions(["_gnutls_call_keylog_func"])
    version = gnutls._libraries.version_in(DEBIAN_LIBGNUTLS, gnutls._VERSION_RE)
    assert version and version.startswith("GnuTLS 3.7.")
    (probe,) = _keylog_function.GNUTLS.probes(_target(DEBIAN_LIBGNUTLS, version), 0)
    assert probe.program == "secret_enter"
    assert probe.cookie == 0x50  # security_parameters.client_random in 3.7's session
    with pytest.raises(UsageError) as refused:
        _keylog_function.GNUTLS.probes(_target(DEBIAN_LIBGNUTLS, "GnuTLS 3.8.3"), 0)
    text = refused.value.one_line()
    assert (
        "only from versions it was proven against" in text and "need a proven GnuTLS 3.7.x" in text
    )


def test_an_unproven_go_release_fails_closed_for_keys(gotls_clients, monkeypatch):
    from ecap.capture.modules import gotls

    binary = gotls_clients["stripped-pie"]
    target = HookTarget(1, binary, str(binary), "executable", "go1.19", ())
    (probe,) = gotls.secret_probes(target, 0)
    assert probe.function == gotls.KEY_LOG and probe.program == "go_secret"
    monkeypatch.setattr(gotls, "KEY_LOG_RELEASES", ((1, 20), (1, 23)))
    with pytest.raises(UsageError) as refused:
        gotls.secret_probes(target, 0)
    assert "only from releases it was proven against" in refused.value.one_line()
