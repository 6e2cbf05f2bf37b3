#!/usr/bin/env bash
# One-command, idempotent host setup for ecap (run as root; `make setup` calls it).
# Installs Debian packages, arranges kernel headers for bcc, mounts tracefs, and
# builds .venv with Debian's python so that bcc/audit/auparse/seccomp import.
# Quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-bpfcc bpftool bpftrace linux-headers-amd64 python3-audit auditd
  python3-venv python3-seccomp apparmor libseccomp-dev
  openssl curl nodejs chromium golang-go postgresql gcc libssl-dev
  clang-14 libbpf-dev libcap2-bin android-libboringssl-dev
  selinux-policy-default selinux-policy-dev checkpolicy semodule-utils policycoreutils
  secilc python3-setools setools openssh-server ansible-core
  zsh mariadb-server mariadb-client libmariadb-dev
  tshark
  gnutls-bin wget libnss3-tools libnss3-dev pkg-config libgnutls28-dev
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (apt, kernel headers, tracefs); rerun with sudo" >&2
  exit 4
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # wireshark-common (tshark) asks whether non-root users may capture: no.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/build. This kernel ships no header
# package; Debian's newest -amd64/-common pair works for uprobe and tracepoint programs.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build" ]; then
  amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  if [ -z "$amd64" ]; then
    echo "setup: no /usr/src/linux-headers-*-amd64 found; install linux-headers-amd64" >&2
    exit 4
  fi
  common="${amd64%-amd64}-common"
  mkdir -p "$kdir"
  ln -sfn "$amd64" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
  echo "setup: linked $kdir/build -> $amd64 and source -> $common (no headers for this kernel)"
fi

if ! grep -qs ' /sys/kernel/tracing tracefs ' /proc/mounts; then
  mount -t tracefs tracefs /sys/kernel/tracing
  echo "setup: mounted tracefs on /sys/kernel/tracing"
fi

# The venv is rebuilt only when pyproject.toml changed since the last install.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.ecap-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing ecap into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import ecap, bcc, audit, auparse, seccomp, setools" \
    || { echo "setup: .venv cannot import ecap/bcc/audit/auparse/seccomp/setools" >&2; exit 4; }
  touch "$stamp"
fi

# ecap's BPF programs (capture and ecap-detect's in-kernel walk): compile each
# bpf/*.bpf.c into a light-skeleton loader (clang, libbpf and bpftool at build time
# only; at run time ecap needs bpf(2) alone — see scripts/build_bpf.py).
for src in bpf/*.bpf.c; do
  loader="${src%.bpf.c}.loader"
  if [ ! -f "$loader" ] || [ "$src" -nt "$loader" ] || [ scripts/build_bpf.py -nt "$loader" ] \
     || [ -n "$(find bpf -name '*.h' -newer "$loader" -print -quit)" ]; then
    .venv/bin/python scripts/build_bpf.py "$src" "$loader"
  fi
done
