"""ecap's one BPF layer: load prebuilt programs, attach them, read their maps and ring.

Capture and detect both go through it. Programs are C files in ``bpf/`` that
``make setup`` compiles into light-skeleton *loaders* (``scripts/build_bpf.py``);
at run time only the bpf(2) and perf_event_open(2) system calls are used — no
compiler, no libbpf, no tracefs — so a process with CAP_BPF, CAP_PERFMON (and
CAP_SYS_PTRACE to probe other users' processes) can do everything here.

- :mod:`.syscall` — the two system calls and their attribute buffers;
- :mod:`.loader` — run a loader: maps and programs by name, with per-load
  parameters (map sizes, read-only globals), and the C constants and layouts;
- :mod:`.maps` — map lookups, updates, deletes, key walks, per-CPU values;
- :mod:`.attach` — uprobes through the perf ``uprobe`` PMU with a BPF cookie,
  raw tracepoints; every attachment is an fd, so a killed process leaves nothing;
- :mod:`.ringbuf` — the BPF ring buffer read through its mmap'd pages.
"""
