"""The OCI/Docker seccomp profile: runtime-default shape, no BPF or perf, ever.

Docker's and containerd's default profiles allow ``bpf`` and ``perf_event_open``
as soon as ``--cap-add BPF``/``PERFMON``/``SYS_ADMIN`` is given, which is exactly
how a sniffer container gets them. This profile keeps the runtime default's shape
(deny by default with EPERM, an allow list, capability-gated blocks in
``includes.caps``, ``archMap``) so it drops in with ``--security-opt
seccomp=FILE``, but refuses those two syscalls with an explicit EPERM rule and
leaves them out of every capability block. ``strict`` also refuses ``ptrace`` and
``process_vm_readv/writev`` (memory readers).

The allow list is ecap's own: ordinary process, file, socket, time and IPC
syscalls; anything touching kernel modules, namespaces, mounts, time setting or
keyrings sits behind the capability that already guards it.
"""

from __future__ import annotations

import json
from typing import Any

from ecap.remediation import SECCOMP_DENY_BPF

from .artifact import Artifact, Context
from .controls import SECCOMP_FILE

EPERM = 1
ENOSYS = 38

DENY_ALWAYS: tuple[str, ...] = ("bpf", "perf_event_open")
DENY_STRICT: tuple[str, ...] = ("ptrace", "process_vm_readv", "process_vm_writev")

ARCH_MAP: list[dict[str, Any]] = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    {"architecture": "SCMP_ARCH_PPC64LE", "subArchitectures": []},
    {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
    {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": []},
]

_ALLOW_TEXT = """
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod
chown chown32 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat get_robust_list get_thread_area getcpu getcwd
getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname getsockopt gettid
gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup
io_submit ioctl ioprio_get ioprio_set ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr
_llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2
mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall
munmap nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal
pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv
preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto set_robust_list
set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid setuid32
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
sigreturn socket socketcall socketpair splice stat stat64 statfs statfs64 statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes
vfork vmsplice wait4 waitid waitpid write writev
"""
ALLOW: tuple[str, ...] = tuple(_ALLOW_TEXT.split())

# Allowed unconditionally by the runtime default on kernels >= 4.8 (where ptrace can
# no longer bypass seccomp); strict refuses them instead.
PTRACE_FAMILY: tuple[str, ...] = DENY_STRICT

# What the runtime default unlocks per capability — minus bpf and perf_event_open.
CAP_GATED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "CAP_SYS_ADMIN",
        (
            "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
            "open_tree", "pivot_root", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
            "setns", "syslog", "umount", "umount2", "unshare",
        ),
    ),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("delete_module", "finit_module", "init_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE", ("kcmp", "pidfd_getfd", "process_madvise")),
    ("CAP_SYS_RAWIO", ("ioperm", "iopl")),
    (
        "CAP_SYS_TIME",
        ("clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64",
         "settimeofday", "stime"),
    ),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
)  # fmt: skip

# clone(2) without CAP_SYS_ADMIN: no new namespaces (CLONE_NEWNS|NEWCGROUP|NEWUTS|
# NEWIPC|NEWUSER|NEWPID|NEWNET must all be clear).
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
CLONE_NS_FLAGS |= 0x40000000
PERSONALITY_VALUES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def profile(profile_name: str) -> dict[str, Any]:
    """The seccomp profile document for ``balanced`` or ``strict``."""
    strict = profile_name == "strict"
    denied = DENY_ALWAYS + (DENY_STRICT if strict else ())
    rules: list[dict[str, Any]] = [
        {
            "names": list(denied),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "comment": "ecap: eBPF/perf (strict: ptrace, process_vm_*) refused even with "
            "CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN/CAP_SYS_PTRACE",
        },
        {"names": sorted(ALLOW), "action": "SCMP_ACT_ALLOW"},
    ]
    if not strict:
        rules.append(
            {
                "names": list(PTRACE_FAMILY),
                "action": "SCMP_ACT_ALLOW",
                "includes": {"minKernel": "4.8"},
                "comment": "as the runtime default: ptrace no longer bypasses seccomp",
            }
        )
    for value in PERSONALITY_VALUES:
        rules.append(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
            }
        )
    # clone's flags are the first argument everywhere except s390, where they are the second.
    clone_flags = {"value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    rules.append({
        "names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, **clone_flags}],
        "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]},
        "comment": "clone without new namespaces",
    })  # fmt: skip
    rules.append({
        "names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 1, **clone_flags}],
        "includes": {"arches": ["s390", "s390x"]},
        "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        "comment": "clone without new namespaces (s390: flags are the second argument)",
    })  # fmt: skip
    rules.append(
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
            "comment": "ENOSYS so that libc falls back to clone, whose flags are checked",
        }
    )
    for cap, names in CAP_GATED:
        if strict and cap == "CAP_SYS_PTRACE":
            names = tuple(n for n in names if n not in DENY_STRICT)
        rules.append(
            {"names": list(names), "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}
        )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": ARCH_MAP,
        "syscalls": rules,
    }


def denied_names(doc: dict[str, Any]) -> set[str]:
    """Syscalls a profile refuses with an explicit, unconditional ERRNO rule."""
    out: set[str] = set()
    for rule in doc.get("syscalls", []):
        if (
            rule.get("action") == "SCMP_ACT_ERRNO"
            and not rule.get("includes")
            and not rule.get("excludes")
        ):
            out.update(rule.get("names", []))
    return out


def render(ctx: Context) -> Artifact:
    """The profile as the JSON file Docker/containerd/CRI-O load."""
    return Artifact(
        SECCOMP_FILE,
        json.dumps(profile(ctx.profile), indent=2) + "\n",
        "seccomp",
        (SECCOMP_DENY_BPF,),
        notes=(
            "use with: docker run --security-opt seccomp=ecap-seccomp.json; in Kubernetes "
            "copy it under the kubelet's seccomp dir and set seccompProfile: Localhost",
        ),
    )
