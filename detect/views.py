"""One view per object kind, shared by every printer (as bpftool pairs its printers).

The JSON document carries every field; the terminal and the HTML host report
print the inventory from these views, so a field added to a kind reaches both:
the named columns first, then — in the terminal's last column and as extra HTML
columns — every other field a record has. Nothing the scan recorded is hidden by
one printer and shown by another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    numeric: bool = False


@dataclass(frozen=True)
class View:
    """How one object kind is shown: title and columns, in order."""

    key: str
    """The inventory list it shows (``programs``, ``maps``...)."""
    title: str
    columns: tuple[Column, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.columns)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.columns if c.numeric)


def _c(key: str, title: str | None = None, numeric: bool = False) -> Column:
    return Column(key, title or key, numeric)


VIEWS: tuple[View, ...] = (
    View(
        "programs",
        "BPF programs",
        (
            _c("id", numeric=True),
            _c("type"),
            _c("name"),
            _c("capabilities", "can"),
            _c("helpers", "calls"),
            _c("holders"),
            _c("map_ids", "maps"),
            _c("tag"),
            _c("load_time", "loaded"),
            _c("created_by_uid", "uid", numeric=True),
            _c("run_cnt", numeric=True),
            _c("xlated_insns", "insns", numeric=True),
            _c("verified_insns", numeric=True),
            _c("source"),
        ),
    ),
    View(
        "maps",
        "BPF maps",
        (
            _c("id", numeric=True),
            _c("type"),
            _c("name"),
            _c("event_output", "to user"),
            _c("key_size", "key", numeric=True),
            _c("value_size", "value", numeric=True),
            _c("max_entries", "entries", numeric=True),
            _c("holders"),
        ),
    ),
    View(
        "links",
        "BPF links",
        (_c("id", numeric=True), _c("type"), _c("prog_id", "prog", numeric=True), _c("info"), _c("holders")),
    ),
    View(
        "probes",
        "Probes (uprobes, kprobes, tracepoints)",
        (
            _c("type"),
            _c("target"),
            _c("offset", numeric=True),
            _c("prog_id", "prog", numeric=True),
            _c("link_id", "link", numeric=True),
            _c("holder_pid", "holder", numeric=True),
            _c("fd", numeric=True),
            _c("source"),
            _c("event"),
            _c("enabled"),
            _c("pid_filter", numeric=True),
        ),
    ),
    View(
        "pins",
        "Pinned objects (bpffs, all mount namespaces)",
        (_c("path"), _c("kind"), _c("obj_id", "id", numeric=True), _c("mount_ns"), _c("via_pid", numeric=True)),
    ),
    View(
        "holders",
        "Processes holding BPF objects",
        (
            _c("pid", numeric=True),
            _c("fd", numeric=True),
            _c("kind"),
            _c("obj_id", "id", numeric=True),
            _c("prog_id", "prog", numeric=True),
        ),
    ),
    View(
        "sessions",
        "Registered ecap capture sessions",
        (
            _c("session_id"),
            _c("status"),
            _c("reason"),
            _c("capture_pid", numeric=True),
            _c("capture_alive", "alive"),
            _c("prog_ids"),
            _c("path"),
        ),
    ),
    View("history", "BPF programs loaded and unloaded (audit log)", (_c("prog_id", numeric=True), _c("pid", numeric=True))),
    View(
        "selinux_denials",
        "SELinux denials of BPF and perf-event permissions (audit log)",
        (
            _c("domain"),
            _c("tclass"),
            _c("perms"),
            _c("permissive"),
            _c("pid", numeric=True),
            _c("comm"),
            _c("exe"),
            _c("scontext"),
        ),
    ),
    View(
        "watchers",
        "Running ecap-detect watchers",
        (_c("pid", numeric=True), _c("status"), _c("reason"), _c("prog_ids")),
    ),
)  # fmt: skip
BY_KEY = {v.key: v for v in VIEWS}


def cell(value: Any) -> str:
    """One table cell as text: lists joined, dicts as compact JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return str(value)


def extra_fields(view: View, record: dict[str, Any]) -> list[tuple[str, Any]]:
    """The fields of ``record`` the view does not name, in the record's order."""
    named = set(view.keys)
    return [(k, v) for k, v in record.items() if k not in named]


def line(view: View, record: dict[str, Any]) -> str:
    """A plain one-object line, as ``bpftool ... show`` prints: the first three
    columns bare, the rest ``title value`` when set, then every field the view
    does not name as ``key=value``."""
    parts = []
    for i, col in enumerate(view.columns):
        value = record.get(col.key)
        if value in (None, [], {}, ""):
            continue
        parts.append(cell(value) if i < 3 else f"{col.title} {cell(value)}")
    parts += [
        f"{k}={cell(v)}" for k, v in extra_fields(view, record) if v not in (None, [], {}, "")
    ]
    return "  ".join(parts)
