"""Printers are paired per object kind: a field in the JSON reaches the terminal and HTML.

Records are built from the collection dataclasses themselves, so a field added to
``Program`` (or any kind) and not to a view still has to show up in both printers
or this test fails.
"""

from __future__ import annotations

import dataclasses
from io import StringIO

import pytest

from ecap.detect import render_term, views
from ecap.detect.model import Holder, Link, Map, Pin, Probe, Program, to_dict
from ecap.reports import tables
from ecap.reports.host import INVENTORY


def _filled(cls: type) -> dict:
    """A record of ``cls`` with every field set to a recognisable, non-empty value."""
    values = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        kind = str(f.type)
        if "tuple" in kind:
            values[f.name] = (1000 + i,)
        elif "dict" in kind:
            values[f.name] = {f"k{i}": f"v{i}"}
        elif "bool" in kind:
            values[f.name] = True
        elif "int" in kind or "float" in kind:
            values[f.name] = 1000 + i
        else:
            values[f.name] = f"{f.name}-value"
    return to_dict(cls(**values))


KINDS = {
    "programs": Program,
    "maps": Map,
    "links": Link,
    "probes": Probe,
    "pins": Pin,
    "holders": Holder,
}


@pytest.mark.parametrize("key,cls", KINDS.items())
def test_every_field_reaches_the_terminal_and_the_html_table(key, cls):
    record = {**_filled(cls), "holders": [4242]}
    view = views.BY_KEY[key]
    text = views.line(view, record)
    for name, value in record.items():
        assert views.cell(value) in text, (key, name)
    (_, title, preferred, numeric) = next(x for x in INVENTORY if x[0] == key)
    table = tables.table(title, [record], preferred, numeric)
    assert set(table["columns"]) == set(record)
    assert table["columns"][: len(view.keys)] == [k for k in view.keys if k in record]


def test_terminal_prints_the_inventory_through_the_views():
    program = {**_filled(Program), "capabilities": ["read-user-memory"], "holders": [7]}
    doc = {
        "host": {"hostname": "h", "kernel": "k"},
        "generated_at": "now",
        "scanner": {"processes": 1, "fds": 1, "duration_ms": 1},
        "summary": {"counts": {}},
        "findings": [],
        "inventory": {"programs": [program]},
        "limitations": [],
    }
    out = StringIO()
    render_term.render(doc, out, color=False)
    assert "BPF programs (1)" in out.getvalue()
    assert "can read-user-memory" in out.getvalue()
