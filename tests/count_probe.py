"""A count-only uprobe (``bench/count.bpf.c``): how often code at some offsets ran.

The benchmarks use it as the floor any uprobe-based capture pays; the gotls tests
use it as an independent witness (how often a Go function's entry instruction
really ran, against how many calls the capture reported). It is built with the
project's own ``scripts/build_bpf.py`` and attached exactly as ecap attaches its
programs (uprobe_multi, PID-scoped).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from ecap.ebpf import attach, loader

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "bench" / "count.bpf.c"


@functools.cache
def count_image() -> loader.Image:
    """The count loader, built once per source (cached next to the Go test builds)."""
    from tests.go_programs import cache_dir

    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    built = cache_dir() / f"count-{digest}.loader"
    if not built.exists():
        spec = importlib.util.spec_from_file_location("build_bpf", REPO / "scripts/build_bpf.py")
        assert spec is not None and spec.loader is not None
        build_bpf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build_bpf)
        built.parent.mkdir(parents=True, exist_ok=True)
        blob = build_bpf.build(SOURCE, built)
        partial = built.with_suffix(f".{id(blob)}.tmp")
        partial.write_bytes(blob)
        partial.replace(built)
    return loader.read_image("count", built.read_bytes())


class CallCounter:
    """Counts hits of the instructions at ``offsets`` of ``path`` in process ``pid``
    (``retprobe``: a uretprobe instead). Close it to detach."""

    def __init__(self, path: str, offsets: list[int], pid: int, *, retprobe: bool = False) -> None:
        self._obj = loader.load(count_image())
        program = "count_return" if retprobe else "count_call"
        try:
            self._link = attach.uprobe_multi(
                self._obj.prog_fd(program), path, offsets, [0] * len(offsets), pid,
                retprobe=retprobe,
            )  # fmt: skip
        except BaseException:
            self._obj.close()
            raise

    def count(self) -> int:
        values = self._obj.map("calls").lookup_all(bytes(4)) or []
        return sum(int.from_bytes(v[:8], "little") for v in values)

    def close(self) -> None:
        attach.detach_all([self._link])
        self._obj.close()

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
