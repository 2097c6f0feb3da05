"""A small debuginfod client: ``GET URL/buildid/ID/debuginfo``, bounded, checked, cached.

For ``tracerctl retrace`` only, never while a process is held.  Servers:
``$DEBUGINFOD_URLS``, then ``[debuginfod] urls``.  The standard library, not
``debuginfod-find``: one build-id over every server is bounded by
``$DEBUGINFOD_MAXTIME`` as one deadline, and the answer is checked before use
(docs/crashes.md, "Cores and retrace").

Security: answers are untrusted: size-capped (``$DEBUGINFOD_MAXSIZE``), http(s)
URLs and redirects only, written 0600 to a temp file in the cache and renamed
only once its build-id matches.  A build-id must be hex before it reaches a URL
or a file name.  The cache (``$XDG_CACHE_HOME/tracerd/debuginfod``) is the
user's own.

Diagnostics: FetchError, one line per server tried (timeout, HTTP status, not
ELF, wrong build-id, too large).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tracerd import atomic
from tracerd.crash import elfinfo

DEFAULT_MAXTIME = 30.0
DEFAULT_MAXSIZE = 2 << 30
CHUNK = 1 << 20
BUILD_ID_RE = re.compile(r"[0-9a-f]{2,128}")
URL_RE = re.compile(r"https?://\S+")


class FetchError(Exception):
    """No server gave a usable file; one line."""


class _HttpOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:  # noqa: PLR0917
        if not URL_RE.fullmatch(newurl):
            raise urllib.error.URLError(f"redirect to a non-http URL refused: {newurl[:80]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def servers(environ: Mapping[str, str], configured: Iterable[str] = ()) -> list[str]:
    """``$DEBUGINFOD_URLS`` then the configured URLs, http(s) only, each once."""
    found: list[str] = []
    for given in [*environ.get("DEBUGINFOD_URLS", "").split(), *configured]:
        url = given.rstrip("/")
        if URL_RE.fullmatch(url) and url not in found:
            found.append(url)
    return found


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def cache_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tracerd" / "debuginfod"


class Client:
    """Fetch debug files by build-id from ``urls`` into ``cache``."""

    def __init__(self, urls: list[str], environ: Mapping[str, str], cache: Path | None = None) -> None:
        self.urls = urls
        self.maxtime = _number(environ, "DEBUGINFOD_MAXTIME", DEFAULT_MAXTIME)
        self.maxsize = int(_number(environ, "DEBUGINFOD_MAXSIZE", DEFAULT_MAXSIZE))
        self.cache = cache or cache_dir(environ)
        self._opener = urllib.request.build_opener(_HttpOnly)

    def fetch(self, build_id: str) -> tuple[Path, str]:
        """The debug file of ``build_id`` (from the cache or a server) and where it came from."""
        if not BUILD_ID_RE.fullmatch(build_id):
            raise FetchError(f"not a build-id: {build_id[:40]!r}")
        cached = self.cache / f"{build_id}.debug"
        if cached.is_file() and elfinfo.build_id(cached) == build_id:
            return cached, f"debuginfod cache {cached}"
        if not self.urls:
            raise FetchError("no debuginfod server (DEBUGINFOD_URLS or [debuginfod] urls)")
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        deadline = time.monotonic() + self.maxtime
        reasons = []
        for url in self.urls:
            try:
                self._download(f"{url}/buildid/{build_id}/debuginfo", build_id, cached, deadline)
            except FetchError as err:
                reasons.append(f"{url}: {err}")
            else:
                return cached, f"debuginfod {url}"
        raise FetchError("; ".join(reasons))

    def _download(self, url: str, build_id: str, target: Path, deadline: float) -> None:
        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FetchError(f"no answer within DEBUGINFOD_MAXTIME ({self.maxtime:g} s)")
            return left

        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            response = self._opener.open(url, timeout=remaining())
            with response:
                def fill(fd: int) -> int:
                    total = 0
                    with os.fdopen(os.dup(fd), "wb") as out:
                        while True:
                            _set_timeout(response, remaining())  # each read bounded by what is left
                            chunk = response.read(CHUNK)
                            if not chunk:
                                break
                            total += len(chunk)
                            if total > self.maxsize:
                                raise FetchError(f"larger than DEBUGINFOD_MAXSIZE ({self.maxsize} bytes)")
                            out.write(chunk)
                    return total

                temp = f".{build_id}.part"
                atomic.write_stream_at(dir_fd, temp, fill, 0o600, prefix=".tmp-")
                found = elfinfo.build_id(f"/proc/self/fd/{dir_fd}/{temp}")
                if found != build_id:
                    with contextlib.suppress(OSError):
                        os.unlink(temp, dir_fd=dir_fd)
                    what = "not an ELF file" if found is None else f"a file of build-id {found}"
                    raise FetchError(f"answered {what}")
                os.rename(temp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except urllib.error.HTTPError as err:
            raise FetchError(f"HTTP {err.code}") from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise FetchError(f"no answer within DEBUGINFOD_MAXTIME ({self.maxtime:g} s)") from None
            raise FetchError(str(reason)) from None
        except TimeoutError:
            raise FetchError(f"no answer within DEBUGINFOD_MAXTIME ({self.maxtime:g} s)") from None
        except OSError as err:
            raise FetchError(str(err)) from None
        finally:
            os.close(dir_fd)


def _set_timeout(response: Any, seconds: float) -> None:
    """The socket under an http.client response (no public way to it)."""
    with contextlib.suppress(AttributeError, OSError):
        response.fp.raw._sock.settimeout(seconds)
