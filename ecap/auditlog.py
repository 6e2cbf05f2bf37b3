"""Mirroring journal entries into the Linux audit trail.

The local journal can be wiped by whoever controls the host; a copy of each
entry's hash in the kernel audit stream (shipped off-host by auditd/remote
logging) lets an auditor prove what the journal said. The Debian ``audit``
bindings provide ``audit_log_user_message``; when audit is absent or disabled we
say so instead of pretending.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AuditSink:
    """A lazily opened netlink connection to the kernel audit subsystem."""

    _fd: int | None = None
    unavailable_reason: str | None = None

    def _open(self) -> int | None:
        if self._fd is not None or self.unavailable_reason is not None:
            return self._fd
        try:
            import audit  # Debian python3-audit, via the venv's system site-packages
        except ImportError:
            self.unavailable_reason = "python audit bindings not installed (python3-audit)"
            return None
        fd = audit.audit_open()
        if fd < 0:
            self.unavailable_reason = "cannot open the audit netlink socket (no CAP_AUDIT_WRITE?)"
            return None
        if audit.audit_is_enabled(fd) != 1:
            audit.audit_close(fd)
            self.unavailable_reason = "kernel audit is disabled (start auditd or 'auditctl -e 1')"
            return None
        self._fd = fd
        return fd

    def send(self, message: str) -> bool:
        """Send one AUDIT_USER record; False (with a reason set) when audit is unavailable."""
        fd = self._open()
        if fd is None:
            return False
        import audit

        rc = audit.audit_log_user_message(fd, audit.AUDIT_USER, message, None, None, None, 1)
        if rc <= 0:
            self.unavailable_reason = f"audit_log_user_message failed (rc={rc})"
            return False
        return True
