"""Kubernetes: restricted Pod Security, a hardened Pod, and a Kyverno guard.

Pod Security Admission ``restricted`` already forbids privileged pods, hostPID and
added capabilities other than NET_BIND_SERVICE, but only in namespaces labelled
for it. The Kyverno ClusterPolicy closes the gap cluster-wide for the four
capabilities an eBPF/ptrace sniffer needs, ``privileged`` and ``hostPID``, with a
single exception: the security team's own authorized capture workload
(``ecap-audit`` pods in the ``ecap-capture`` namespace, which RBAC must reserve
for that team; every capture there still needs a signed token).
"""

from __future__ import annotations

from typing import Any

import yaml

from ecap.remediation import KUBERNETES_POD_SECURITY

from .artifact import Artifact, Context

APP_NAMESPACE = "apps"
CAPTURE_NAMESPACE = "ecap-capture"
CAPTURE_LABEL = {"app.kubernetes.io/name": "ecap-audit"}
DENIED_CAPS = ("BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE")
POLICY_NAME = "ecap-deny-capture-powers"


def namespaces() -> list[dict[str, Any]]:
    restricted = {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
    }
    restricted["pod-security.kubernetes.io/enforce-version"] = "latest"
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": APP_NAMESPACE, "labels": restricted}},
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": CAPTURE_NAMESPACE, "labels": {
             "pod-security.kubernetes.io/enforce": "privileged",
             "pod-security.kubernetes.io/warn": "restricted",
             "pod-security.kubernetes.io/audit": "restricted",
         }}},
    ]  # fmt: skip


def pod(profile: str) -> dict[str, Any]:
    """An ordinary workload meeting 'restricted' plus ecap's seccomp/AppArmor profiles."""
    container_ctx: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }
    if profile == "strict":
        container_ctx["readOnlyRootFilesystem"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": APP_NAMESPACE},
        "spec": {
            "hostPID": False,
            "hostIPC": False,
            "hostNetwork": False,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "seccompProfile": {
                    "type": "Localhost",
                    "localhostProfile": "ecap/ecap-seccomp.json",
                },
                "appArmorProfile": {"type": "Localhost", "localhostProfile": "ecap-app-container"},
            },
            "containers": [
                {"name": "app", "image": "example/app:latest", "securityContext": container_ctx}
            ],
        },
    }


def capture_pod() -> dict[str, Any]:
    """The exception: the security team's authorized ecap-audit capture pod.

    It runs in the privileged-PSS ``ecap-capture`` namespace with the label the
    Kyverno exclude matches, gets BPF/PERFMON/SYS_PTRACE and host PIDs, is confined by
    the ``ecap-audit`` AppArmor profile and the runtime's default seccomp profile
    (ecap's own refuses bpf), and still needs a signed token for every capture.
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ecap-capture", "namespace": CAPTURE_NAMESPACE,
                     "labels": dict(CAPTURE_LABEL)},
        "spec": {
            "hostPID": True,
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "securityContext": {
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "Localhost", "localhostProfile": "ecap-audit"},
            },
            "containers": [{
                "name": "ecap-audit",
                "image": "example/ecap-audit:latest",
                "args": ["capture", "tls", "--pid", "PID", "--token", "/etc/ecap/token/token.jwt",
                         "--format", "jsonl", "--output", "/var/lib/ecap/session.jsonl"],
                "securityContext": {
                    "privileged": False,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": [
                        "BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE"]},
                },
                "volumeMounts": [
                    {"name": "token", "mountPath": "/etc/ecap/token", "readOnly": True},
                    {"name": "tracing", "mountPath": "/sys/kernel/tracing", "readOnly": True},
                    {"name": "modules", "mountPath": "/lib/modules", "readOnly": True},
                    {"name": "journal", "mountPath": "/var/lib/ecap"},
                ],
            }],
            "volumes": [
                {"name": "token", "secret": {"secretName": "ecap-capture-token"}},
                {"name": "tracing", "hostPath": {"path": "/sys/kernel/tracing"}},
                {"name": "modules", "hostPath": {"path": "/lib/modules"}},
                {"name": "journal", "hostPath": {"path": "/var/lib/ecap",
                                                  "type": "DirectoryOrCreate"}},
            ],
        },
    }  # fmt: skip


def excluded(policy: dict[str, Any], pod: dict[str, Any]) -> bool:
    """Whether every rule of ``policy`` excludes ``pod`` (namespace and labels match).

    A small model of Kyverno's ``exclude.any[].resources`` (namespaces + matchLabels),
    enough to show that the exception covers the capture pod and nothing else.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    for rule in policy["spec"]["rules"]:
        hit = False
        for f in (rule.get("exclude") or {}).get("any") or []:
            res = f.get("resources") or {}
            ns_ok = not res.get("namespaces") or meta.get("namespace") in res["namespaces"]
            want = (res.get("selector") or {}).get("matchLabels") or {}
            if ns_ok and all(labels.get(k) == v for k, v in want.items()):
                hit = True
        if not hit:
            return False
    return True


def _exclude() -> dict[str, Any]:
    return {
        "any": [
            {
                "resources": {
                    "namespaces": [CAPTURE_NAMESPACE],
                    "selector": {"matchLabels": dict(CAPTURE_LABEL)},
                }
            }
        ]
    }


def kyverno_policy() -> dict[str, Any]:
    match = {"any": [{"resources": {"kinds": ["Pod"]}}]}
    all_containers = "request.object.spec.[ephemeralContainers, initContainers, containers][]"
    privileged_pattern = {"=(securityContext)": {"=(privileged)": "false"}}
    caps = [*DENIED_CAPS, *(f"CAP_{c}" for c in DENIED_CAPS), "ALL"]
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {
            "name": POLICY_NAME,
            "annotations": {
                "policies.kyverno.io/title": "Deny eBPF/ptrace capture powers",
                "policies.kyverno.io/category": "ecap",
                "policies.kyverno.io/severity": "high",
                "policies.kyverno.io/subject": "Pod",
                "policies.kyverno.io/description": (
                    "Pods may not be privileged, share the host PID namespace or add "
                    "BPF, PERFMON, SYS_ADMIN or SYS_PTRACE, except the security team's "
                    f"authorized ecap-audit pods in namespace {CAPTURE_NAMESPACE}."
                ),
            },
        },
        "spec": {
            "validationFailureAction": "Enforce",
            "background": True,
            "rules": [
                {
                    "name": "deny-privileged-and-host-pid",
                    "match": match,
                    "exclude": _exclude(),
                    "validate": {
                        "message": "privileged pods and hostPID are not allowed (ecap-harden)",
                        "pattern": {
                            "spec": {
                                "=(hostPID)": "false",
                                "=(ephemeralContainers)": [privileged_pattern],
                                "=(initContainers)": [privileged_pattern],
                                "containers": [privileged_pattern],
                            }
                        },
                    },
                },
                {
                    "name": "deny-capture-capabilities",
                    "match": match,
                    "exclude": _exclude(),
                    "preconditions": {
                        "all": [
                            {"key": "{{ request.operation || 'BACKGROUND' }}",
                             "operator": "NotEquals", "value": "DELETE"}
                        ]
                    },
                    "validate": {
                        "message": (
                            "adding BPF, PERFMON, SYS_ADMIN or SYS_PTRACE is not allowed "
                            "(ecap-harden)"
                        ),
                        "deny": {
                            "conditions": {
                                "any": [
                                    {"key": f"{{{{ {all_containers}"
                                     ".securityContext.capabilities.add[] }}",
                                     "operator": "AnyIn", "value": caps}
                                ]
                            }
                        },
                    },
                },
            ],
        },
    }  # fmt: skip


def _dump(docs: list[dict[str, Any]], comment: str) -> str:
    return f"# {comment}\n" + yaml.safe_dump_all(docs, sort_keys=False)


def render(ctx: Context) -> list[Artifact]:
    ids = (KUBERNETES_POD_SECURITY,)
    return [
        Artifact(
            "kubernetes/namespace.yaml",
            _dump(namespaces(), "Pod Security: restricted for apps; the capture namespace is "
                  "privileged and must be RBAC-restricted to the security team"),
            "kubernetes", ids,
        ),
        Artifact(
            "kubernetes/pod.yaml",
            _dump([pod(ctx.profile)], "A workload meeting 'restricted' with ecap's profiles"),
            "kubernetes", ids,
        ),
        Artifact(
            "kubernetes/capture-pod.yaml",
            _dump([capture_pod()], "The exception: the security team's authorized capture pod "
                  f"(namespace {CAPTURE_NAMESPACE}, excluded by the Kyverno policy)"),
            "kubernetes", ids,
        ),
        Artifact(
            "kubernetes/kyverno-clusterpolicy.yaml",
            _dump([kyverno_policy()], "Kyverno: deny capture powers cluster-wide, except "
                  f"ecap-audit pods in {CAPTURE_NAMESPACE}"),
            "kyverno", ids,
            notes=(f"exception kept for the authorized capture workload in {CAPTURE_NAMESPACE}",),
        ),
    ]  # fmt: skip
