"""Docker: run flags, a compose snippet, and the settings that hand out capture powers.

Root in a container can run an eBPF sniffer as soon as it holds CAP_BPF+CAP_PERFMON
(or CAP_SYS_ADMIN), or can read other processes with CAP_SYS_PTRACE and the host
PID namespace. The runtime defaults withhold these; the flags below make that
explicit, add the seccomp and AppArmor profiles that keep refusing even when a
capability is added later, and the table says why each dangerous setting matters.
"""

from __future__ import annotations

import yaml

from ecap.remediation import CONTAINER_CAPABILITIES

from .artifact import Artifact, Context
from .controls import SECCOMP_FILE

APPARMOR_PROFILE = "ecap-app-container"
SECCOMP_HOST_PATH = "/etc/ecap/seccomp/ecap-seccomp.json"

DANGEROUS: tuple[tuple[str, str], ...] = (
    (
        "--privileged",
        "All capabilities, no seccomp, no AppArmor, all devices: a sniffer runs as on the host.",
    ),
    ("--cap-add BPF", "Load BPF programs and maps (with PERFMON: attach uprobes to libssl)."),
    ("--cap-add PERFMON", "Open perf events, including uprobe events on any binary."),
    ("--cap-add SYS_ADMIN", "Grants BPF and PERFMON powers on every kernel, plus mount(2)."),
    ("--cap-add SYS_PTRACE", "Read/write other processes' memory (keys, plaintext buffers)."),
    ("--pid=host", "Sees host processes: targets for uprobes and /proc/PID/mem readers."),
    ("--security-opt seccomp=unconfined", "Removes the syscall filter refusing bpf/perf."),
    ("--security-opt apparmor=unconfined", "Removes the LSM layer denying tracefs/bpffs."),
    ("-v /sys/kernel/tracing (or /sys/kernel/debug, /sys/fs/bpf)", "Tracing/BPF filesystems."),
)


def run_flags(profile: str) -> list[str]:
    """``docker run`` flags for an ordinary (non-capture) container."""
    flags = [
        "--cap-drop ALL",
        "--security-opt no-new-privileges:true",
        f"--security-opt seccomp={SECCOMP_HOST_PATH}",
        f"--security-opt apparmor={APPARMOR_PROFILE}",
    ]  # and no --pid=host, --privileged or --cap-add (see dangerous-settings.md)
    if profile == "strict":
        flags += ["--read-only", "--user 65534:65534"]
    return flags


CAPTURE_SERVICE = "ecap-capture"
CAPTURE_CAPS = ("BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE")


def capture_service() -> dict:
    """The one exception: the security team's authorized ecap-audit container.

    It gets exactly what capture needs (BPF, PERFMON, read-only ptrace, host PIDs)
    under the ``ecap-audit`` AppArmor profile and the runtime's *default* seccomp
    profile (ecap's refuses bpf); every capture still needs a signed token.
    """
    return {
        "image": "example/ecap-audit:latest",
        "command": ["ecap-audit", "capture", "tls", "--pid", "PID", "--token",
                    "/etc/ecap/token.jwt", "--format", "jsonl", "--output",
                    "/var/lib/ecap/session.jsonl"],
        "cap_drop": ["ALL"],
        "cap_add": list(CAPTURE_CAPS),
        "pid": "host",
        "security_opt": ["no-new-privileges:true", "apparmor=ecap-audit"],
        "read_only": True,
        "privileged": False,
        "volumes": [
            "/sys/kernel/tracing:/sys/kernel/tracing:ro",
            "/lib/modules:/lib/modules:ro",
            "/usr/src:/usr/src:ro",
            "/etc/ecap:/etc/ecap:ro",
            "/var/lib/ecap:/var/lib/ecap",
            "/run/ecap:/run/ecap",
        ],
    }  # fmt: skip


def compose(profile: str) -> dict:
    """Compose services: an ordinary hardened one, and the authorized capture exception."""
    service: dict = {
        "image": "example/app:latest",
        "cap_drop": ["ALL"],
        "security_opt": [
            "no-new-privileges:true",
            f"seccomp={SECCOMP_HOST_PATH}",
            f"apparmor={APPARMOR_PROFILE}",
        ],
        "privileged": False,
    }
    if profile == "strict":
        service["read_only"] = True
        service["user"] = "65534:65534"
    return {"services": {"app": service, CAPTURE_SERVICE: capture_service()}}


def compose_problems(doc: dict) -> list[str]:
    """Settings in a compose document that hand out capture powers (exception honoured)."""
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        return ["services is not a mapping of services"]
    problems = []
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append(f"service {name} is not a mapping")
            continue
        opts = [str(o) for o in svc.get("security_opt") or []]
        if svc.get("privileged"):
            problems.append(f"service {name} is privileged")
        if "ALL" not in (svc.get("cap_drop") or []):
            problems.append(f"service {name} does not drop ALL capabilities")
        if any(o.endswith("=unconfined") for o in opts):
            problems.append(f"service {name} runs unconfined")
        risky = {str(c).upper().removeprefix("CAP_") for c in svc.get("cap_add") or []}
        risky &= {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "ALL"}
        if risky or svc.get("pid") == "host":
            exempt = name == CAPTURE_SERVICE and "apparmor=ecap-audit" in opts
            if not exempt or "SYS_ADMIN" in risky or "ALL" in risky:
                what = ", ".join(sorted(risky)) + (" pid=host" if svc.get("pid") == "host" else "")
                problems.append(f"service {name} gets capture powers ({what.strip(', ')})")
    return problems


def dangerous_table() -> str:
    rows = ["| Setting | Why it is dangerous |", "|---|---|"]
    rows += [f"| `{s}` | {why} |" for s, why in DANGEROUS]
    return "\n".join(rows)


def render(ctx: Context) -> list[Artifact]:
    ids = (CONTAINER_CAPABILITIES,)
    flags = run_flags(ctx.profile)
    flags_text = (
        "# docker run flags for ordinary containers (ecap-harden, profile "
        f"'{ctx.profile}').\n# Install {SECCOMP_FILE} as {SECCOMP_HOST_PATH} and load "
        f"apparmor/{APPARMOR_PROFILE}\n# (ecap-harden generate --app ...) before using them.\n"
        + " \\\n".join(flags)
        + "\n"
    )
    compose_text = (
        "# docker compose snippet (ecap-harden): 'app' shows an ordinary service;\n"
        f"# '{CAPTURE_SERVICE}' is the security team's authorized capture, the only\n"
        "# service allowed BPF/PERFMON/SYS_PTRACE and host PIDs (every capture needs a token).\n"
        + yaml.safe_dump(compose(ctx.profile), sort_keys=False)
    )
    md = (
        "# Container settings that hand out eBPF/ptrace capture powers\n\n"
        + dangerous_table()
        + "\n\nThe security team's authorized capture container is the one exception: "
        "it runs `ecap-audit` with `--cap-add BPF --cap-add PERFMON --pid=host` under the "
        "`ecap-audit` AppArmor profile, and every capture still needs a signed token.\n"
    )
    return [
        Artifact("docker/run-flags.txt", flags_text, "text", ids),
        Artifact("docker/compose.yaml", compose_text, "compose", ids),
        Artifact("docker/dangerous-settings.md", md, "markdown", ids),
    ]
