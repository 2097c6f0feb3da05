"""OpenMetrics: prometheus_client's exposition served by tracerd, checked by promtool.

A real tracerd serves ``[metrics] listen`` (a loopback port or a unix
socket) or writes ``[metrics] textfile``; real processes start, crash and
are refused under it, and the counters move.  ``promtool check metrics``
(Debian's prometheus package) judges the exposition, and a real Prometheus
scrapes it when installed.  Each failure mode (port in use, textfile
directory missing) gives one warning and tracing goes on.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet_helpers import WATCH_RULE, crash_under_tracerd, tracerd_events
from tests.support import reap, wait_until
from tests.test_daemon import check
from tracerd.config import parse


def metrics_config(listen: str = "127.0.0.1:0", extra: str = "") -> str:
    return f'{WATCH_RULE}[metrics]\nlisten = "{listen}"\n{extra}'


def address(daemon: Any) -> str:
    [event] = wait_until(lambda: tracerd_events(daemon, "metrics_listening"), "metrics_listening in tracerd's log")
    return str(event["address"])


def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def promtool(text: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (apt package prometheus)")
    return subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_counters_move_and_promtool_accepts_the_exposition(
    daemon_factory: Any, cbin: Any, spawn: Any
) -> None:
    """Sessions started, crashes by program and signal, hook latency, fault-to-report latency and
    refusals move as real processes are traced, crash and are refused; a program no rule or
    Postfix names is labelled "other"; promtool accepts the text, and a scraper asking for
    OpenMetrics gets it."""
    daemon = daemon_factory(metrics_config())
    url = f"http://{address(daemon)}/metrics"
    _, before = scrape(url)
    assert value(before, "tracerd_sessions_started_total", tracer="watch") == 0
    assert value(before, "tracerd_sessions_active", tracer="watch") == 0
    crash_under_tracerd(daemon, cbin, spawn, name="smtpd")
    crash_under_tracerd(daemon, cbin, spawn, name="weird-name")
    sleeper = spawn(cbin("sleeper"))
    assert sleeper.readline() == "ready\n"
    reply = daemon.request(json.dumps({"op": "hook", "name": "smtpd", "pid": sleeper.pid}).encode() + b"\n")
    assert reply["error"] == "denied"
    _, after = scrape(url)
    assert value(after, "tracerd_sessions_started_total", tracer="watch") == 2
    assert value(after, "tracerd_crashes_total", program="smtpd", signal="SIGSEGV") == 1
    assert value(after, "tracerd_crashes_total", program="other", signal="SIGSEGV") == 1
    assert not any("weird-name" in line for line in after.splitlines())
    assert value(after, "tracerd_hooks_refused_total", reason="denied") == 1
    assert value(after, "tracerd_hook_attach_seconds_count", tracer="watch") == 2
    assert value(after, "tracerd_crash_report_seconds_count") == 2
    assert value(after, "tracerd_crash_report_seconds_sum") > 0
    assert value(after, "tracerd_watcher_rss_bytes") > 0
    checked = promtool(after)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    content_type, openmetrics = scrape(url, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert openmetrics.endswith("# EOF\n")


def test_repeat_within_flood_window_counts_as_suppressed(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """The second crash of a signature inside crash_flood_window is only counted: the
    suppressed-report counter says so."""
    daemon = daemon_factory(metrics_config())
    url = f"http://{address(daemon)}/metrics"
    crash_under_tracerd(daemon, cbin, spawn)
    assert value(scrape(url)[1], "tracerd_crash_reports_suppressed_total") == 0
    crash_under_tracerd(daemon, cbin, spawn)
    assert value(scrape(url)[1], "tracerd_crash_reports_suppressed_total") == 1


def test_unix_socket_endpoint(daemon_factory: Any, tmp_path: Path) -> None:
    """listen = a unix socket path: GET /metrics over it answers the exposition; other paths and
    methods get 404 and 405."""
    path = tmp_path / "metrics.sock"
    daemon = daemon_factory(metrics_config(str(path)))
    assert address(daemon) == str(path)

    def ask(request: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    reply = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"tracerd_sessions_started_total" in reply
    assert ask(b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert ask(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert ask(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_port_in_use_warns_once_and_tracing_goes_on(daemon_factory: Any, cbin: Any, spawn: Any) -> None:
    """Another program holds the metrics port: one metrics_unavailable warning, and processes are
    still traced and their crashes reported."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        daemon = daemon_factory(metrics_config(f"127.0.0.1:{holder.getsockname()[1]}"))
        report, _ = crash_under_tracerd(daemon, cbin, spawn)
        assert report["signal"]["name"] == "SIGSEGV"
        warnings = tracerd_events(daemon, "metrics_unavailable")
        assert len(warnings) == 1, warnings
        assert "Address already in use" in warnings[0]["error"]
    finally:
        holder.close()


def test_textfile_missing_dir_warns_once_then_recovers(
    daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path
) -> None:
    """The textfile's directory does not exist: one warning, tracing goes on; once the directory
    appears the file is written (atomically: no temp file left) and promtool accepts it."""
    directory = tmp_path / "textfile"
    target = directory / "tracerd.prom"
    daemon = daemon_factory(f'{WATCH_RULE}[metrics]\ntextfile = "{target}"\ntextfile_interval = 1\n')
    crash_under_tracerd(daemon, cbin, spawn)
    wait_until(lambda: tracerd_events(daemon, "metrics_textfile_failed"), "the textfile warning")
    directory.mkdir()
    wait_until(lambda: tracerd_events(daemon, "metrics_textfile_recovered"), "the textfile written")
    assert len(tracerd_events(daemon, "metrics_textfile_failed")) == 1
    text = target.read_text()
    assert value(text, "tracerd_crashes_total", program="smtpd", signal="SIGSEGV") == 1
    assert [p.name for p in directory.iterdir()] == ["tracerd.prom"]
    checked = promtool(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_routable_address_needs_allow_remote(tmp_path: Path) -> None:
    """tracerd --check refuses a metrics address other hosts could reach, unless allow_remote."""
    refused = check('[metrics]\nlisten = "0.0.0.0:9464"\n', tmp_path)
    assert refused.returncode == 1
    assert "metrics.listen: 0.0.0.0 is not a loopback address" in refused.stderr
    assert "(line 2)" in refused.stderr
    allowed = check('[metrics]\nlisten = "0.0.0.0:9464"\nallow_remote = true\n', tmp_path)
    assert allowed.returncode == 0, allowed.stderr


def test_real_prometheus_scrapes_the_endpoint(daemon_factory: Any, cbin: Any, spawn: Any, tmp_path: Path) -> None:
    """A real Prometheus scraping tracerd's endpoint stores tracerd_sessions_started_total."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt package prometheus)")
    daemon = daemon_factory(metrics_config())
    crash_under_tracerd(daemon, cbin, spawn)
    web = socket.socket()
    web.bind(("127.0.0.1", 0))
    web_port = web.getsockname()[1]
    web.close()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tracerd\n"
        f"    static_configs:\n      - targets: ['{address(daemon)}']\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        query = f"http://127.0.0.1:{web_port}/api/v1/query?query=tracerd_sessions_started_total%7Btracer%3D%22watch%22%7D"

        def stored() -> list[Any] | None:
            try:
                _, body = scrape(query)
            except OSError:
                return None
            return json.loads(body)["data"]["result"] or None

        [result] = wait_until(stored, "Prometheus to store a scrape of tracerd", timeout=60, interval=0.5)
        assert result["value"][1] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        finally:
            reap(proc)


def test_docs_fleet_configuration_is_valid() -> None:
    """The [journal] and [metrics] block of docs/fleet.md is a valid configuration, and
    says what it means (a loopback port, a textfile)."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "fleet.md").read_text()
    section = readme.split("## Fleet: journald, structured syslog, metrics", 1)[1]
    start = section.index("    [journal]\n")
    block = section[start : section.index("textfile_interval", start)] + "textfile_interval = 15.0"
    config = parse("\n".join(line.removeprefix("    ") for line in block.splitlines()))
    assert config.journal.enabled == "auto"
    assert config.metrics.listen == "127.0.0.1:9464"
    assert config.metrics.textfile.endswith("/tracerd.prom")
    assert not config.metrics.allow_remote
