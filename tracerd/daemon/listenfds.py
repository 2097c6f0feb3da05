"""Socket activation: the listening socket systemd passes (docs/design.md, "Restart").

:func:`listen_fds` is sd_listen_fds(3) with ``unset_environment``, fds made
close-on-exec: no tracer inherits them. ``SOCKET.restarting`` tells hooks in
the backlog a tracerd is coming; removed once sessions are re-adopted.

Security: LISTEN_FDS counts only when LISTEN_PID is this process; an fd is
used only if the kernel says it is a listening unix stream socket on exactly
the configured path.

Diagnostics: any other passed fd raises ConfigError (tracerd exits 1); no
LISTEN_FDS for us gives None (tracerd binds the socket itself).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import structlog

from tracerd.errors import ConfigError

log = structlog.get_logger("tracerd")

SD_LISTEN_FDS_START = 3
MAX_FDS = 64  # far more than tracerd.socket passes (one); a silly LISTEN_FDS is refused


def listen_fds(environ: dict[str, str] | None = None) -> list[int]:
    """The descriptors systemd passed to this process (sd_listen_fds semantics)."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid is None or count is None:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        number = int(count)
    except ValueError:
        raise ConfigError(f"LISTEN_PID={pid!r} LISTEN_FDS={count!r}: not numbers", key="socket") from None
    if not 0 <= number <= MAX_FDS:
        raise ConfigError(f"LISTEN_FDS={number}: not between 0 and {MAX_FDS}", key="socket")
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + number))
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError as err:
            raise ConfigError(f"LISTEN_FDS names fd {fd}, which is not open: {err.strerror}", key="socket") from err
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return fds


def _describe(sock: socket.socket) -> str:
    try:
        return repr(sock.getsockname())
    except OSError:
        return "an unnamed socket"


def inherited_socket(path: Path, environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket for ``path`` that systemd passed, or None when none was."""
    fds = listen_fds(environ)
    if not fds:
        return None
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        message = f"systemd passed {len(fds)} sockets; tracerd.socket must have one ListenStream="
        raise ConfigError(message, key="socket")
    fd = fds[0]
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        os.close(fd)
        raise ConfigError(f"the fd systemd passed is not a socket: {err.strerror}", key="socket") from err
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        what = _describe(sock)
        sock.close()
        raise ConfigError(f"the socket systemd passed ({what}) is not a listening unix stream socket", key="socket")
    name = sock.getsockname()
    if name != str(path):
        sock.close()
        raise ConfigError(
            f"the socket systemd passed is {name!r}, but tracerd.toml says socket = {str(path)!r};"
            " make ListenStream= in tracerd.socket the same path", key="socket",
        )  # fmt: skip
    sock.setblocking(False)
    return sock


def marker(path: Path) -> Path:
    return path.with_name(path.name + ".restarting")


def mark_restarting(path: Path) -> None:
    """SIGTERM of a socket-activated tracerd: hooks in the backlog wait for the next one."""
    try:
        fd = os.open(marker(path), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.utime(fd)
        finally:
            os.close(fd)
    except OSError as err:
        log.warning("restart_marker_failed", path=str(marker(path)), error=str(err))


def clear_restarting(path: Path) -> None:
    """Restarted, sessions re-adopted: a hook that waits now waits for a hung tracerd, if any."""
    try:
        os.unlink(marker(path))
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("restart_marker_failed", path=str(marker(path)), error=str(err))
