"""Go test binaries built here with Debian's golang-go (installed by make setup).

The detector names hooks in Go programs from ``.symtab`` or, when stripped, from
``.gopclntab``. Building our own tiny crypto/tls client — once with symbols and
once with ``-ldflags=-s -w`` — makes those tests independent of whatever Go
tools happen to be on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = """package main

import (
	"crypto/tls"
	"fmt"
	"os"
)

func main() {
	conn, err := tls.Dial("tcp", "127.0.0.1:1", &tls.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	buf := make([]byte, 16)
	conn.Write([]byte("x"))
	conn.Read(buf)
}
"""


def build_go_tls_client(workdir: Path) -> tuple[Path, Path]:
    """(binary with .symtab, stripped binary) of a small Go TLS client."""
    go = shutil.which("go")
    assert go, "golang-go is installed by make setup"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "main.go").write_text(SOURCE)
    env = {
        **os.environ,
        "HOME": str(workdir),
        "GOCACHE": str(workdir / "cache"),
        "GO111MODULE": "off",
        "CGO_ENABLED": "0",
    }
    with_symtab = workdir / "gotls-symtab"
    stripped = workdir / "gotls-stripped"
    for out, flags in ((with_symtab, []), (stripped, ["-ldflags=-s -w"])):
        subprocess.run(
            [go, "build", *flags, "-o", str(out), "main.go"],
            cwd=workdir,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return with_symtab, stripped
