"""Kubernetes manifests against the offline schema; the Kyverno policy's structure."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from ecap.harden import containers, kubernetes, kyverno_check, validate


def _docs(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_manifests_validate_against_the_kubernetes_schema(generated) -> None:
    version = kubernetes_validate.latest_version()
    for d in generated.values():
        for name in ("namespace.yaml", "pod.yaml"):
            for doc in _docs(d / "kubernetes" / name):
                kubernetes_validate.validate(doc, version, strict=True)


def test_namespace_labels_and_pod_security_context(generated) -> None:
    apps, capture = _docs(generated["strict"] / "kubernetes" / "namespace.yaml")
    assert apps["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert capture["metadata"]["name"] == kubernetes.CAPTURE_NAMESPACE
    (pod,) = _docs(generated["strict"] / "kubernetes" / "pod.yaml")
    ctx = pod["spec"]["containers"][0]["securityContext"]
    assert ctx["capabilities"]["drop"] == ["ALL"] and ctx["allowPrivilegeEscalation"] is False
    assert pod["spec"]["hostPID"] is False
    assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == "Localhost"


def test_schema_validation_is_not_vacuous() -> None:
    bad = kubernetes.pod("balanced")
    bad["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] = "ALL"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_validate_reports_a_broken_manifest(tmp_path, run_harden) -> None:
    d = tmp_path / "out" / "kubernetes"
    d.mkdir(parents=True)
    bad = kubernetes.pod("balanced")
    bad["spec"]["hostPID"] = "yes"
    (d / "pod.yaml").write_text(yaml.safe_dump(bad))
    (d / "unparsable.yaml").write_text("a: [1, 2\n")
    results = {v.path: v for v in validate.validate_dir(tmp_path / "out", load_audit=False)}
    assert (
        not results["kubernetes/pod.yaml"].ok
        and "hostPID" in results["kubernetes/pod.yaml"].message
    )
    assert not results["kubernetes/unparsable.yaml"].ok
    assert "does not parse" in results["kubernetes/unparsable.yaml"].message
    assert run_harden("validate", str(tmp_path / "out")).returncode == 1


def test_kyverno_policy_structure_and_exception(generated) -> None:
    (policy,) = _docs(generated["balanced"] / "kubernetes" / "kyverno-clusterpolicy.yaml")
    assert kyverno_check.problems(policy, required_caps=kubernetes.DENIED_CAPS) == []
    assert policy["spec"]["validationFailureAction"] == "Enforce"
    for rule in policy["spec"]["rules"]:
        excl = rule["exclude"]["any"][0]["resources"]
        assert excl["namespaces"] == [kubernetes.CAPTURE_NAMESPACE]
        assert excl["selector"]["matchLabels"] == kubernetes.CAPTURE_LABEL


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: [r.pop("exclude") for r in p["spec"]["rules"]], "no exclude"),
        (lambda p: p["spec"].update(validationFailureAction="Block"), "validationFailureAction"),
        (lambda p: p["spec"]["rules"][1]["validate"]["deny"]["conditions"]["any"][0]
         .update(value=["NET_RAW"]), "capability BPF"),
        (lambda p: p["spec"]["rules"][0]["validate"].update(deny={}), "exactly one of"),
        (lambda p: p.update(kind="Policy"), "ClusterPolicy"),
    ],
)  # fmt: skip
def test_kyverno_check_catches_mistakes(mutate, expected: str) -> None:
    policy = copy.deepcopy(kubernetes.kyverno_policy())
    mutate(policy)
    assert any(expected in p for p in kyverno_check.problems(policy, required_caps=("BPF",)))


def test_docker_compose_and_flags(generated) -> None:
    (compose,) = _docs(generated["strict"] / "docker" / "compose.yaml")
    svc = compose["services"]["app"]
    assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"]
    flags = (generated["strict"] / "docker" / "run-flags.txt").read_text()
    assert "--cap-drop ALL" in flags and "seccomp=" in flags and "apparmor=" in flags
    table = (generated["strict"] / "docker" / "dangerous-settings.md").read_text()
    for setting, _why in containers.DANGEROUS:
        assert setting in table
    for word in ("--privileged", "BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "--pid=host"):
        assert word in table
    assert "--pid" not in flags  # docker has no "private" pid mode; the default is private


def test_exception_covers_the_capture_pod_and_nothing_else(generated) -> None:
    policy = kubernetes.kyverno_policy()
    (capture,) = _docs(generated["balanced"] / "kubernetes" / "capture-pod.yaml")
    kubernetes_validate.validate(capture, kubernetes_validate.latest_version(), strict=True)
    assert kubernetes.excluded(policy, capture)
    caps = capture["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    assert {"BPF", "PERFMON"} <= set(caps) and "SYS_ADMIN" not in caps
    # the same pod elsewhere, or without the label, is not exempt
    elsewhere = copy.deepcopy(capture)
    elsewhere["metadata"]["namespace"] = kubernetes.APP_NAMESPACE
    unlabelled = copy.deepcopy(capture)
    unlabelled["metadata"]["labels"] = {}
    assert not kubernetes.excluded(policy, elsewhere)
    assert not kubernetes.excluded(policy, unlabelled)
    assert not kubernetes.excluded(policy, kubernetes.pod("balanced"))


def test_compose_check_allows_only_the_capture_exception(generated) -> None:
    (compose,) = _docs(generated["balanced"] / "docker" / "compose.yaml")
    assert containers.compose_problems(compose) == []
    assert compose["services"][containers.CAPTURE_SERVICE]["pid"] == "host"
    rogue = copy.deepcopy(compose)
    rogue["services"]["app"]["cap_add"] = ["CAP_BPF"]
    rogue["services"]["app"]["pid"] = "host"
    assert any("app gets capture powers" in p for p in containers.compose_problems(rogue))
    renamed = copy.deepcopy(compose)
    renamed["services"]["sniffer"] = renamed["services"].pop(containers.CAPTURE_SERVICE)
    assert any("sniffer gets capture powers" in p for p in containers.compose_problems(renamed))
    for bad in ({"privileged": True}, {"security_opt": ["seccomp=unconfined"]}, {"cap_drop": []}):
        broken = copy.deepcopy(compose)
        broken["services"]["app"].update(bad)
        assert containers.compose_problems(broken), bad
