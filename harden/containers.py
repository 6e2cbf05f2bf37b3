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
        "--pid private",
    ]
    if profile == "strict":
        flags += ["--read-only", "--user 65534:65534"]
    return flags


def compose(profile: str) -> dict:
    """A docker compose service fragment applying the same settings."""
    service: dict = {
        "image": "example/app:latest",
        "cap_drop": ["ALL"],
        "security_opt": [
            "no-new-privileges:true",
            f"seccomp={SECCOMP_HOST_PATH}",
            f"apparmor={APPARMOR_PROFILE}",
        ],
        "pid": "private",
        "privileged": False,
    }
    if profile == "strict":
        service["read_only"] = True
        service["user"] = "65534:65534"
    return {"services": {"app": service}}


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
        "# docker compose snippet (ecap-harden): merge into your services.\n"
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
