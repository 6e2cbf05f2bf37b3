"""``capture bash`` / ``capture zsh`` on real shells typed into through a pty.

Each shell is interactive on its own pseudo-terminal (its line editor in raw
mode, prompts, continuation prompts), driven as a person types; the capture
attaches while a line is half typed. What must hold is what the issue lists:
every command one event with its whole text and exit status, nothing lost or
garbled, nothing from a shell that is not in scope.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.capture.audit_helpers import authorized_finding, records_of, stop_capture
from tests.pty_shell import PtyShell

pytestmark = [pytest.mark.bpf]

ARGV = {
    "bash": ["bash", "--norc", "--noprofile", "-i"],
    "zsh": ["zsh", "-f", "-i"],
}
LONG = "echo " + "x" * 20 * 1024  # a 20 KiB command line


@pytest.fixture
def shells() -> Iterator[list[PtyShell]]:
    made: list[PtyShell] = []
    try:
        yield made
    finally:
        for sh in made:
            sh.close()


def _shell(shells: list[PtyShell], name: str) -> PtyShell:
    sh = PtyShell(ARGV[name], env={"HISTCONTROL": "ignorespace"})
    shells.append(sh)
    sh.prompt()
    return sh


def _multi_line(sh: PtyShell, *lines: str) -> None:
    for line in lines[:-1]:
        sh.type(line + "\r")
        sh.expect("> ")
    sh.run(lines[-1])


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_every_command_is_one_event_with_its_status(shell, start_capture, shells):
    sh = _shell(shells, shell)
    other = _shell(shells, shell)  # the same user, another shell, not in the token
    hide = [] if shell == "bash" else ["setopt hist_ignore_space"]
    for line in hide:
        sh.run(line)
    sh.type("echo typed-while-the-capture-attached")  # Enter comes after the attach
    run = start_capture([sh.pid], module=shell)
    assert {h["class"] for h in authorized_finding(run.proc.pid)["hooked"]} == {"shell"}
    sh.type("\r")
    sh.prompt()
    other.run("echo from-the-other-shell")
    sh.run("false")
    _multi_line(sh, "if true; then", "  echo inside", "fi")
    _multi_line(sh, "cat <<EOF", "heredoc body", "EOF")
    sh.run(" echo hidden-from-history")
    other.run("echo other-again")
    sh.type(LONG + "\r", chunk=4096)
    sh.prompt(60)
    sh.type("exec true\r")
    assert sh.proc.wait(20) == 0
    assert run.wait(30) == 0, run.stderr
    assert "all targets exited" in run.stderr

    cmds = records_of(run.output, "command")
    assert [c["text"] for c in cmds] == [
        "echo typed-while-the-capture-attached",
        "false",
        "if true; then\n  echo inside\nfi",
        "cat <<EOF\nheredoc body\nEOF",
        " echo hidden-from-history",
        LONG,
        "exec true",
    ]
    # bash execs /bin/true: the shell is replaced. zsh's `true` is a builtin: exec
    # runs it and the shell exits with its status.
    last = (None, "exec") if shell == "bash" else (0, "exit")
    assert [(c["status"], c["ending"]) for c in cmds] == [
        (0, "status"), (1, "status"), (0, "status"), (0, "status"), (0, "status"),
        (0, "status"), last,
    ]  # fmt: skip
    assert [c["lines"] for c in cmds] == [1, 1, 3, 3, 1, 1, 1]
    long = cmds[5]
    assert (long["length"], long["truncated"], long["lost"]) == (len(LONG), 0, 0)
    assert {c["pid"] for c in cmds} == {sh.pid}
    assert {(c["shell"], c["uid"]) for c in cmds} == {(shell, 0)}
    assert all(c["tty"] and c["tty"].startswith("pts/") for c in cmds)
    summary = records_of(run.output, "summary")[0]
    assert summary["events"]["command"] == len(cmds)


def test_a_line_beyond_the_limit_is_counted_as_truncated(start_capture, shells):
    sh = _shell(shells, "bash")
    run = start_capture([sh.pid], module="bash", extra=("--max-call-bytes", "16384"))
    sh.type(LONG + "\r", chunk=4096)
    sh.prompt(60)
    sh.type("exit 3\r")
    assert sh.proc.wait(20) == 3
    assert run.wait(30) == 0, run.stderr
    long, leave = records_of(run.output, "command")
    assert long["text"] == LONG[:16384]
    assert (long["length"], long["truncated"]) == (len(LONG), len(LONG) - 16384)
    assert (leave["text"], leave["status"], leave["ending"]) == ("exit 3", 3, "exit")
    assert records_of(run.output, "summary")[0]["truncated_bytes"] == len(LONG) - 16384


def test_session_report_counts_commands_and_statuses_never_their_text(
    start_capture, shells, ecap_env, tmp_path
):
    import json

    sh = _shell(shells, "bash")
    run = start_capture([sh.pid], module="bash")
    sh.run("echo secret-value-1")
    sh.run("false")
    sh.type("exit 3\r")
    sh.proc.wait(20)
    assert run.wait(30) == 0, run.stderr
    html, twin = tmp_path / "r.html", tmp_path / "r.json"
    done = ecap_env.run("ecap-audit", "report", str(run.output), "--html", str(html),
                        "--json", str(twin))  # fmt: skip
    assert done.returncode == 0, done.stderr
    view = json.loads(twin.read_text())
    assert view["activity"]["command"]["count"] == 3
    assert view["activity"]["command"]["outcomes"] == {
        "exit status 0": 1, "exit status 1": 1, "exit status 3": 1,
    }  # fmt: skip
    assert view["verdict_ok"] is True
    for path in (html, twin):
        assert "secret-value" not in path.read_text()
    replay = ecap_env.run("ecap-audit", "replay", str(run.output))
    lines = [ln for ln in replay.stdout.splitlines() if " bash [" in ln]
    assert [ln.split(" bash ", 1)[1].split("]")[0] + "]" for ln in lines] == [
        "[status 0]", "[status 1]", "[status 3 (exit)]",
    ]  # fmt: skip
    assert lines[0].endswith("$ echo secret-value-1") and f"pid {sh.pid} uid 0 pts/" in lines[0]


@pytest.mark.parametrize("descendants", [True, False], ids=["with-descendants", "without"])
def test_a_child_shell_is_captured_only_when_descendants_are_granted(
    descendants, start_capture, shells
):
    sh = _shell(shells, "bash")
    run = start_capture([sh.pid], module="bash", descendants=descendants)
    sh.run("bash --norc --noprofile -i")  # the child shell prints the same prompt
    sh.run("echo in-the-child")
    sh.run("exit 4")
    sh.run("echo back-in-the-parent")
    stop_capture(run)
    cmds = records_of(run.output, "command")
    parent = [(c["text"], c["status"]) for c in cmds if c["pid"] == sh.pid]
    child = [(c["text"], c["status"], c["ending"]) for c in cmds if c["pid"] != sh.pid]
    assert parent[:1] == [("bash --norc --noprofile -i", 4)]
    assert parent[1:] == [("echo back-in-the-parent", 0)]
    header = records_of(run.output, "header")[0]
    assert header["descendants"] is descendants
    if descendants:
        assert child == [("echo in-the-child", 0, "status"), ("exit 4", 4, "exit")]
        assert records_of(run.output, "summary")[0]["descendants"] >= 1
    else:
        assert child == []


def test_a_raw_shell_capture_replays_to_its_commands(start_capture, shells, ecap_env):
    """The module's own records go through the same pipeline offline: a raw file
    of a shell (and a descendant, with its fork and exit) replays to the commands
    a jsonl capture writes."""
    from ecap.capture.schema import validate_lines

    sh = _shell(shells, "bash")
    run = start_capture([sh.pid], module="bash", fmt="raw", descendants=True)
    sh.run("bash --norc --noprofile -i")
    sh.run("echo in-the-child")
    sh.run("exit 4")
    sh.run("false")
    sh.type("exit 3\r")
    assert sh.proc.wait(20) == 3
    assert run.wait(30) == 0, run.stderr
    replayed = ecap_env.run("ecap-audit", "replay", str(run.output), "--format", "jsonl")
    assert replayed.returncode == 0, replayed.stderr
    records = validate_lines(replayed.stdout.splitlines())
    cmds = [(c["text"], c["status"], c["ending"], c["pid"] == sh.pid)
            for c in records if c["type"] == "command"]  # fmt: skip
    assert cmds == [
        ("echo in-the-child", 0, "status", False),
        ("exit 4", 4, "exit", False),
        ("bash --norc --noprofile -i", 4, "status", True),
        ("false", 1, "status", True),
        ("exit 3", 3, "exit", True),
    ]
    summary = records[-1]
    assert summary["events"]["command"] == 5 and summary["descendants"] >= 1
