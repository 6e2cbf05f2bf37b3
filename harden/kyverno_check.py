"""Structural check of a Kyverno ClusterPolicy — ecap's own, not Kyverno's schema.

The Kubernetes JSON schema (``kubernetes-validate``) has no Kyverno CRDs, and the
CRD schema is not shipped offline here, so this module checks what ecap relies on:
the fields Kyverno requires for a validate rule, the values its enums allow, and
that the policy really denies ``privileged``, ``hostPID`` and the four capture
capabilities while keeping the capture namespace's exception. It is honest about
its reach: it cannot evaluate JMESPath or prove Kyverno's admission behaviour.
"""

from __future__ import annotations

import json
from typing import Any

_ACTIONS = {"Enforce", "Audit", "enforce", "audit"}
_RULE_KINDS = ("pattern", "anyPattern", "deny", "podSecurity", "cel", "foreach", "manifests")
_OPERATORS = {
    "Equals", "NotEquals", "In", "AnyIn", "AllIn", "NotIn", "AnyNotIn", "AllNotIn",
    "GreaterThan", "GreaterThanOrEquals", "LessThan", "LessThanOrEquals",
    "DurationGreaterThan", "DurationLessThan",
}  # fmt: skip


def problems(doc: Any, *, required_caps: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a ClusterPolicy document (empty list: looks right)."""
    out: list[str] = []
    if not isinstance(doc, dict):
        return ["document is not a mapping"]
    if doc.get("apiVersion") not in ("kyverno.io/v1", "kyverno.io/v2beta1"):
        out.append(f"apiVersion {doc.get('apiVersion')!r} is not kyverno.io/v1 or v2beta1")
    if doc.get("kind") != "ClusterPolicy":
        out.append(f"kind {doc.get('kind')!r} is not ClusterPolicy")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name or len(name) > 63:
        out.append("metadata.name missing or longer than 63 characters")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*out, "spec missing"]
    if spec.get("validationFailureAction") not in _ACTIONS:
        out.append("spec.validationFailureAction must be Enforce or Audit")
    rules = spec.get("rules")
    if not isinstance(rules, list) or not rules:
        return [*out, "spec.rules must be a non-empty list"]
    names = set()
    for i, rule in enumerate(rules):
        where = f"spec.rules[{i}]"
        if not isinstance(rule, dict):
            out.append(f"{where} is not a mapping")
            continue
        rname = rule.get("name")
        if not isinstance(rname, str) or not rname or len(rname) > 63 or rname in names:
            out.append(f"{where}.name missing, duplicate or longer than 63 characters")
        names.add(rname)
        match = rule.get("match")
        if not isinstance(match, dict) or not (match.get("any") or match.get("all")):
            out.append(f"{where}.match needs any/all resource filters")
        else:
            for f in match.get("any") or match.get("all"):
                if not isinstance(f, dict) or not (f.get("resources") or {}).get("kinds"):
                    out.append(f"{where}.match filter without resources.kinds")
        validate = rule.get("validate")
        if not isinstance(validate, dict):
            out.append(f"{where}.validate missing")
            continue
        kinds = [k for k in _RULE_KINDS if k in validate]
        if len(kinds) != 1:
            out.append(f"{where}.validate needs exactly one of {', '.join(_RULE_KINDS)}")
        if "deny" in validate:
            conds = (validate["deny"] or {}).get("conditions") or {}
            for c in (conds.get("any") or []) + (conds.get("all") or []):
                if c.get("operator") not in _OPERATORS:
                    out.append(f"{where}: unknown operator {c.get('operator')!r}")
                if "key" not in c:
                    out.append(f"{where}: condition without key")
    text = json.dumps(spec)
    for needle, what in (("hostPID", "hostPID"), ("=(privileged)", "privileged")):
        if needle not in text:
            out.append(f"policy does not deny {what}")
    for cap in required_caps:
        if f'"{cap}"' not in text:
            out.append(f"policy does not deny capability {cap}")
    if not any(r.get("exclude") for r in rules if isinstance(r, dict)):
        out.append("no exclude: the authorized capture workload has no exception")
    return out
