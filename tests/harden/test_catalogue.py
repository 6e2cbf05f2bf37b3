"""The controls catalogue covers every control id and says whom each one stops."""

from __future__ import annotations

import json

from ecap.harden.controls import BY_ID, CATALOGUE, PROFILES
from ecap.remediation import ALL_CONTROL_IDS


def test_catalogue_covers_every_remediation_id_once() -> None:
    ids = [c.id for c in CATALOGUE]
    assert sorted(ids) == sorted(ALL_CONTROL_IDS)
    assert len(ids) == len(set(ids))


def test_every_control_has_threat_model_side_effects_and_files() -> None:
    for c in CATALOGUE:
        assert set(c.stops.as_dict().values()) <= {"yes", "partial", "no"}, c.id
        assert c.blocks and c.side_effects and c.artifacts, c.id
        if c.one_way:
            assert c.one_way_note, c.id


def test_sysctl_controls_carry_baseline_value_sets() -> None:
    ubpf = BY_ID["sysctl-unprivileged-bpf"]
    assert ubpf.settings["balanced"].accepted == ("1", "2")
    assert ubpf.locks("strict") and not ubpf.locks("balanced")  # 1 locks, 2 does not
    assert set(BY_ID["sysctl-perf-event-paranoid"].settings["balanced"].accepted) == {"2", "3"}
    assert BY_ID["sysctl-ptrace-scope"].locking_values == ("3",)
    for c in CATALOGUE:
        if c.kind == "sysctl":
            assert c.sysctl and c.settings, c.id
            for profile, s in c.settings.items():
                assert profile in PROFILES
                assert s.recommended in s.accepted, c.id
    # The honest part: no sysctl stops host root.
    assert all(c.stops.host_root == "no" for c in CATALOGUE if c.sysctl and "bpf" in c.sysctl)


def test_help_and_controls_show_the_catalogue(run_harden) -> None:
    helptext = run_harden("--help")
    assert helptext.returncode == 0
    for cid in ALL_CONTROL_IDS:
        assert cid in helptext.stdout
    doc = json.loads(run_harden("controls", "--json").stdout)
    assert {c["id"] for c in doc["controls"]} == set(ALL_CONTROL_IDS)
    plain = run_harden("controls").stdout
    assert "container root: yes" in plain and "one-way:" in plain
