"""A rogue hook on any function the shell and database modules use is rated as a
hook on plaintext (shell or database), critical — the detector's list comes from
the modules' declarations, so this checks every function they hook."""

from __future__ import annotations

import glob
import os

import pytest

from ecap.capture import modules
from ecap.elf import open_elf
from tests.detect.conftest import findings_of, functions, scan

pytestmark = [pytest.mark.bpf]

FILES = {
    "bash": "/bin/bash",
    "zsh": "/usr/lib/x86_64-linux-gnu/zsh/*/zsh/zle.so",
    "mysqld": "/usr/sbin/mariadbd",
    "postgres": "/usr/lib/postgresql/*/bin/postgres",
}


def test_rogue_hooks_on_every_audit_function_are_critical(hook):
    started = {}
    for name, pattern in FILES.items():
        found = sorted(glob.glob(pattern))
        assert found, f"{pattern} is not installed (make setup installs it)"
        path = os.path.realpath(found[-1])
        names = {h.function for h in modules.get(name).hooks}
        defined = set(open_elf(path).find_functions(names))
        assert defined == names, f"{path} lacks {names - defined}"
        started[name] = (hook(*(f"{path}:{fn}" for fn in sorted(names)), mode="multi"), names)
    doc = scan()
    for name, (h, names) in started.items():
        (f,) = findings_of(doc, pid=h.pid)
        assert {fn for fn, _ in functions(f)} == names
        expected = modules.get(name).classification
        assert {x["class"] for x in f["hooked"]} == {expected}, name
        assert f["severity"] == "critical", name
