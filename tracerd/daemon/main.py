"""tracerd: the resident daemon, in the foreground (systemd supervises).

``tracerd [--config FILE] [--check]``; signals, --check and reloads are in
tracerd(8). A bad config or unusable socket is fatal (exit 1); after that
nothing a client or tracer does stops the daemon. SIGTERM exits within
:data:`SHUTDOWN_SECONDS`, leaving sessions.json for the next start
(docs/design.md, "Restart").

Security: the config file is root's, trusted as tracerd.config says; nothing
from a client reaches the config.

Diagnostics: structlog JSON lines on stderr; a fatal error is also one
``tracerd: ...`` line on stderr. A failed SIGHUP reload keeps the old config
and says why in syslog and ``status`` (``config_error``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from tracerd import __version__, tracers
from tracerd import config as configmod
from tracerd.config import Config, Locator
from tracerd.daemon import listenfds, syslogcheck
from tracerd.daemon.auth import group_id
from tracerd.daemon.resume import Readoption, snapshot
from tracerd.daemon.server import Server, seconds_since_exec
from tracerd.daemon.service import TracerdService
from tracerd.daemon.sessionsfile import SessionsFile
from tracerd.errors import ConfigError, TracerUnavailable
from tracerd.hook import DEFAULT_TIMEOUT as HOOK_TIMEOUT
from tracerd.hookcheck import postfix_hook_warning
from tracerd.sinks.logfile import LogDir
from tracerd.sinks.logwriter import LogWriter
from tracerd.sinks.syslog import LOG_WARNING, SyslogSink

log = structlog.get_logger("tracerd")
SHUTDOWN_SECONDS = 5.0  # SIGTERM to exit, at most (README)


def setup_logging() -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how we are; a no-op without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as err:
        log.warning("sd_notify_failed", error=str(err))


def machine_checks(config: Config, locate: Locator) -> tuple[list[ConfigError], list[ConfigError]]:
    """(errors, warnings) only this machine can tell: an unknown socket_group; a tracer
    not on PATH; attach_timeout longer than pftrace-hook's default --timeout."""
    errors: list[ConfigError] = []
    warnings: list[ConfigError] = []
    if config.socket_group and group_id(config.socket_group) is None:
        line = locate(None, "socket_group")
        errors.append(ConfigError(f"no such group {config.socket_group!r}", key="socket_group", line=line))
    named: list[tuple[str, str | None, str, str]] = [("default_tracer", None, "default_tracer", config.default_tracer)]
    named += [(f"rule[{i}].tracer", f"rule[{i}]", "tracer", r.tracer) for i, r in enumerate(config.rules) if r.tracer]
    for dotted, section, key, name in named:
        try:
            tracers.backend(name)
        except TracerUnavailable as err:
            message = f"{err} (not on PATH): the processes it is chosen for will not be traced"
            warnings.append(ConfigError(message, key=dotted, line=locate(section, key)))
    if config.attach_timeout > HOOK_TIMEOUT:
        message = (
            f"{config.attach_timeout:g} s is longer than pftrace-hook waits by default"
            f" (--timeout {HOOK_TIMEOUT:g} s): the hook gives up first and the process runs untraced"
        )
        warnings.append(ConfigError(message, key="attach_timeout", line=locate(None, "attach_timeout")))
    return errors, warnings


def _by_line(problem: ConfigError) -> tuple[bool, int]:
    return problem.line is None, problem.line or 0


def check(path: Path | None) -> int:
    """``--check``: every error and warning in line order on stderr; exit 1 if any error."""
    source = configmod.source_of(path)
    try:
        text = configmod.read(source) if source else ""
    except ConfigError as err:
        print(f"tracerd: {err}", file=sys.stderr)
        return 1
    config, errors = configmod.parse_all(text, source)
    warnings: list[ConfigError] = []
    if config is not None:
        more, warnings = machine_checks(config, Locator(text))
        errors += more
    found = [(problem, "") for problem in errors] + [(problem, "warning: ") for problem in warnings]
    for problem, prefix in sorted(found, key=lambda item: _by_line(item[0])):
        print(f"tracerd: {prefix}{problem}", file=sys.stderr)
    warn_postfix_hook(lambda warning: print(f"tracerd: warning: {warning}", file=sys.stderr))
    if errors:
        return 1
    print(f"tracerd: configuration OK ({source or 'built-in defaults'})")
    return 0


def warn_postfix_hook(emit: Callable[[str], None]) -> None:
    """Warn if debugger_command names a pftrace-hook root cannot run (tracerd.hookcheck)."""
    warning = postfix_hook_warning()
    if warning is not None:
        emit(warning)


def load_config(path: Path | None) -> tuple[Config, list[ConfigError]]:
    """The config (or ConfigError) and machine_checks' findings, all only warnings at run time."""
    source = configmod.source_of(path)
    text = configmod.read(source) if source else ""
    config = configmod.parse(text, source)
    errors, warnings = machine_checks(config, Locator(text))
    return config, sorted(errors + warnings, key=_by_line)


def log_warnings(warnings: list[ConfigError]) -> None:
    for warning in warnings:
        log.warning("config_warning", key=warning.key, line=warning.line, warning=str(warning))


def prepare_dirs(config: Config) -> None:
    """state_dir must exist and be ours; log_dir is LogDir's concern."""
    config.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    if config.state_dir.is_symlink():
        raise ConfigError(f"{config.state_dir} is a symlink", key="state_dir")


def raise_fd_limit() -> None:
    """A thousand sessions (logs, pipes, pidfds) need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as err:
            log.warning("fd_limit", soft=soft, hard=hard, error=str(err))


def _loop_exception_handler() -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio's own errors (accept() retrying EMFILE) as log lines, at most one a second."""
    last = [0.0, 0]

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        now = time.monotonic()
        last[1] += 1
        if now - last[0] >= 1.0:
            error = context.get("exception")
            log.error("event_loop_error", message=str(context.get("message")),
                      error=repr(error) if error else None, repeats=last[1])  # fmt: skip
            last[0], last[1] = now, 0

    return handle


async def hand_over(server: Server, readopting: asyncio.Task[None], sessions_file: SessionsFile) -> None:
    """SIGTERM, before any detach: stop accepting and re-adopting, mark the restart
    (socket activation), and freeze sessions.json for the next start."""
    if server.inherited is not None:
        listenfds.mark_restarting(server.path)
    await server.close()
    readopting.cancel()
    await asyncio.wait({readopting}, timeout=0.5)
    await sessions_file.freeze(timeout=0.5)


async def serve(
    config: Config, config_path: Path | None, warnings: list[ConfigError], inherited: socket.socket | None = None
) -> int:
    log_warnings(warnings)
    # postconf takes its time (a second when it fails): the socket accepts meanwhile
    hookcheck = asyncio.get_running_loop().run_in_executor(
        None, warn_postfix_hook, lambda warning: log.warning("postfix_hook", warning=warning)
    )
    prepare_dirs(config)
    raise_fd_limit()
    writer = LogWriter()
    writer.start()
    logdir = LogDir(config.log_dir, max_log_bytes=config.max_log_bytes, writer=writer)
    sink = SyslogSink(config.syslog)
    if (problem := syslogcheck.probe(config.syslog)) is not None:  # once here; `status` repeats it
        log.warning("syslog_unreachable", warning=problem)
    service = TracerdService(config, logdir, sink)

    def bad_request() -> None:
        service.counters["bad_requests"] += 1

    server = Server(
        config.socket, service.handle, group_gid=group_id(config.socket_group),
        on_bad_request=bad_request, sock=inherited,
    )  # fmt: skip
    sessions_file = SessionsFile(config.state_dir, lambda: snapshot(service))
    service.runner.on_change = sessions_file.changed
    readoption = Readoption(service, sessions_file)
    await server.start()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception_handler())
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def reload() -> None:
        try:
            new, warnings = load_config(config_path)
        except ConfigError as err:
            # stderr alone is easily missed under systemd: syslog and status too
            service.config_error = str(err)
            where = configmod.source_of(config_path) or "built-in defaults"
            service.sink.send(LOG_WARNING, f"config {where} not reloaded, the old one stays in force: {err}")
            log.error("reload_failed", config=str(where), error=str(err))
            return
        service.config_error = None
        service.reload(new)
        log_warnings(warnings)
        log.info("reloaded", config=str(new.source or "built-in defaults"))

    loop.add_signal_handler(signal.SIGHUP, reload)
    readopting = loop.create_task(readoption.run())
    # clear the marker once every session is back; a re-adoption ended by a stop keeps it
    readopting.add_done_callback(
        lambda task: None if task.cancelled() or stop.is_set() else listenfds.clear_restarting(config.socket)
    )
    await hookcheck  # its warning before READY=1; hooks are served meanwhile
    log.info("ready", socket=str(config.socket), pid=os.getpid(), log_dir=str(config.log_dir),
             default_tracer=config.default_tracer, activated=inherited is not None,
             since_exec_ms=round(seconds_since_exec() * 1000))  # fmt: skip
    sd_notify("READY=1")
    await stop.wait()
    sd_notify("STOPPING=1")
    log.info("stopping", sessions=len(service.registry))
    # README: exit within 5 s whatever a tracer does; the last second is the logs'
    deadline = loop.time() + SHUTDOWN_SECONDS - 1.0
    await hand_over(server, readopting, sessions_file)
    await service.shutdown(timeout=max(0.5, deadline - loop.time()))
    writer.stop(timeout=max(0.5, deadline + 1.0 - loop.time()) / 2)
    service.close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracerd", description="Attach tracers to Postfix daemons.")
    parser.add_argument("--config", type=Path, help="TOML file (default $TRACERD_CONFIG, /etc/tracerd/tracerd.toml)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"tracerd {__version__}")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.config)
    try:
        config, warnings = load_config(args.config)
    except ConfigError as err:
        print(f"tracerd: {err}", file=sys.stderr)
        return 1
    setup_logging()
    try:
        # first: no child (postconf, a tracer) may inherit LISTEN_FDS or systemd's socket
        inherited = listenfds.inherited_socket(config.socket)
    except ConfigError as err:
        log.error("fatal", error=str(err))
        print(f"tracerd: {err}", file=sys.stderr)
        return 1
    if inherited is not None:  # after a crash too: the hooks in the backlog wait for us
        listenfds.mark_restarting(config.socket)
    try:
        return asyncio.run(serve(config, args.config, warnings, inherited))
    except ConfigError as err:
        log.error("fatal", error=str(err))
        print(f"tracerd: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
