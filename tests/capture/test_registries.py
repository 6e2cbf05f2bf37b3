"""The three capture registries and the checks built on them (no kernel needed).

Modules, output formats and protocol decoders are each a file; the CLI, the token
vocabulary and the detector read them. These tests hold each declaration to what
the rest of the system relies on, and show that a module×format pair that cannot
work, or another module's option, is refused with exit 2 before the gate.
"""

from __future__ import annotations

import dataclasses

import pytest

from ecap.authz import request
from ecap.capture import abi, cli, decoders, modules, sinks
from ecap.capture.modules.interface import ModuleOption
from ecap.capture.sinks.interface import Sink
from ecap.detect import classify
from ecap.ebpf import loader


def test_every_module_declaration_matches_its_bpf_object():
    assert {"tls", "gnutls", "nss", "auto"} <= set(modules.names())
    for module in modules.registry().values():
        if module.select is not None:  # auto: captures through the modules it selects
            assert not module.hooks and not module.bpf_object and not module.options
            assert "tls_rw" in modules.bpf_objects(module.name)
            continue
        image = loader.image(module.bpf_object)
        sections = image.program_sections
        for hook in module.hooks:
            assert hook.program or hook.return_program, (module.name, hook.function)
            if hook.program:
                assert sections.get(hook.program) == "uprobe", (module.name, hook.function)
            if hook.return_program:
                assert sections[hook.return_program] == "uretprobe"
            if hook.at_returns:  # a plain uprobe on each return instruction
                assert sections[hook.at_returns] == "uprobe"
            if hook.kind:  # the cookie's record kind exists in capture_abi.h
                assert getattr(abi.of(module.bpf_object), f"KIND_{hook.kind.upper()}")
        assert any(h.required for h in module.hooks)
        assert module.emits and module.identity and module.classification


def test_vocabularies_come_from_the_registries():
    assert request.known_modules() == modules.names()
    assert set(request.known_modes()) == {s.token_mode for s in sinks.every().values()}
    # keys decrypt a connection for anyone who recorded it: never granted by default
    assert {"keylog", "pcapng"} <= set(request.known_modes())
    assert not {"keylog", "pcapng"} & set(request.default_modes())
    # the detector classifies every plaintext hook of every module
    for module in modules.registry().values():
        for function in module.plaintext_functions():
            assert classify.classify(function) == module.classification
    assert [d.name for d in decoders.registry()][:2] == ["http2", "http1"]


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return int(exit_info.value.code), capsys.readouterr().err


def test_a_format_the_module_cannot_feed_is_refused_before_the_gate(
    monkeypatch, capsys, ecap_env, sleeper
):
    audit = Sink("audit", "commands only", "audit", frozenset({"command"}), lambda o, _: o)
    registry = {**sinks.registry(), "audit": audit}
    monkeypatch.setattr(sinks, "registry", lambda: registry)
    for name, value in ecap_env.env.items():
        if name.startswith("ECAP_"):
            monkeypatch.setenv(name, value)
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    code, err = _run_cli(
        ["capture", "tls", "--pid", str(sleeper.pid), "--token", str(token), "--format", "audit"],
        capsys,
    )
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert "the tls module produces nothing the audit format writes" in line
    assert "choose one of: jsonl, keylog, pcapng, raw, text" in line
    assert not ecap_env.journal.exists()  # the gate never ran


def test_another_modules_option_is_refused(monkeypatch, capsys, ecap_env, sleeper):
    tls = modules.get("tls")
    other = dataclasses.replace(
        tls, name="other", options=(ModuleOption("--other-lib", "the other module's own"),)
    )
    registry = {**modules.registry(), "other": other}
    monkeypatch.setattr(modules, "registry", lambda: registry)
    for name, value in ecap_env.env.items():
        if name.startswith("ECAP_"):
            monkeypatch.setenv(name, value)
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    code, err = _run_cli(
        ["capture", "tls", "--pid", str(sleeper.pid), "--token", str(token),
         "--other-lib", "/x.so"],
        capsys,
    )  # fmt: skip
    assert code == 2
    assert "--other-lib applies to the other module only" in err
    assert not ecap_env.journal.exists()


def test_an_unexpected_error_is_one_line_and_exit_4(capsys, monkeypatch):
    from ecap import cli as common

    monkeypatch.delenv("ECAP_DEBUG", raising=False)

    def broken(_argv):
        raise KeyError("ring buffer went away")

    with pytest.raises(SystemExit) as exit_info:
        common.run(broken, [])
    assert exit_info.value.code == 4
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "internal error (KeyError" in line and "ECAP_DEBUG=1" in line
