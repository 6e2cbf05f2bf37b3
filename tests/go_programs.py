"""Go test binaries built here with Debian's golang-go (installed by make setup).

The detector names hooks in Go programs from ``.symtab`` or, when stripped, from
``.gopclntab``; ``capture gotls`` must find its functions in plain, stripped, PIE
and stripped PIE builds. Building our own programs makes those tests independent
of whatever Go tools happen to be on the machine.

Builds are cached across test sessions by the hash of the source, the build flags
and the Go toolchain's version (a cold build of crypto/tls and net/http takes
~25 s on these machines, a cached one nothing), in ``$ECAP_TEST_CACHE`` or
``/var/tmp/ecap-test-cache``; Go's own build cache lives there too, so the variants
share their compiled standard library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

PROGRAMS = Path(__file__).parent / "capture" / "programs"
GOTLS_CLIENT = PROGRAMS / "gotls_client.go"

VARIANTS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "stripped": ("-ldflags=-s -w",),
    "pie": ("-buildmode=pie",),
    "stripped-pie": ("-buildmode=pie", "-ldflags=-s -w"),
}
"""The four ways a Go program ships: flags of ``go build``."""

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


def cache_dir() -> Path:
    return Path(os.environ.get("ECAP_TEST_CACHE", "/var/tmp/ecap-test-cache"))


def _go() -> str:
    go = shutil.which("go")
    assert go, "golang-go is installed by make setup"
    return go


def go_version() -> str:
    return subprocess.run([_go(), "version"], capture_output=True, text=True, check=True).stdout


def build_go(source: str, name: str, flags: tuple[str, ...] = ()) -> Path:
    """The binary of a one-file, standard-library-only Go program (cached)."""
    key = hashlib.sha256("\0".join([source, *flags, go_version()]).encode()).hexdigest()[:20]
    out_dir = cache_dir() / "go" / key
    binary = out_dir / name
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f"src-{os.getpid()}"
    work.mkdir(exist_ok=True)
    (work / "main.go").write_text(source)
    env = {
        **os.environ,
        "HOME": str(cache_dir()),
        "GOCACHE": str(cache_dir() / "gocache"),
        "GOPATH": str(cache_dir() / "gopath"),
        "GO111MODULE": "off",
        "CGO_ENABLED": "0",
        "GOFLAGS": "",
    }
    tmp = out_dir / f"{name}.{os.getpid()}.tmp"
    try:
        subprocess.run(
            [_go(), "build", *flags, "-o", str(tmp), "main.go"],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        os.replace(tmp, binary)  # atomic: a concurrent session sees all or nothing
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return binary


def build_gotls_clients() -> dict[str, Path]:
    """The gotls test client (``capture/programs/gotls_client.go``) in each variant."""
    source = GOTLS_CLIENT.read_text()
    return {variant: build_go(source, f"gotls-{variant}", flags)
            for variant, flags in VARIANTS.items()}  # fmt: skip


def build_go_tls_client() -> tuple[Path, Path]:
    """(binary with .symtab, stripped binary) of a small Go TLS client."""
    return (
        build_go(SOURCE, "gotls-symtab"),
        build_go(SOURCE, "gotls-stripped", VARIANTS["stripped"]),
    )
