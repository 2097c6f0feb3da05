"""The man pages (man/*.8, man/*.5): roff that groff renders without a warning,
with the Postfix-style sections in order, and the paths `make install` uses."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

MAN = Path(__file__).parent.parent / "man"
PAGES = ["pftrace-hook.8", "tracerd.8", "tracerctl.8", "tracerd.toml.5"]
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "SECURITY", "DIAGNOSTICS", "FILES", "SEE ALSO"]

needs_groff = pytest.mark.skipif(
    shutil.which("groff") is None, reason="groff is not installed (apt-get install groff-base)"
)


def lint(page: Path) -> str:
    """groff's warnings (all of them: -ww) for the page, as man -l would format it."""
    result = subprocess.run(
        ["groff", "-ww", "-man", "-z", str(page)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_the_pages_are_the_documented_ones() -> None:
    """man/ holds exactly pftrace-hook(8), tracerd(8), tracerctl(8) and tracerd.toml(5)."""
    assert sorted(p.name for p in MAN.iterdir()) == sorted(PAGES)


@needs_groff
@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page: str) -> None:
    """`groff -ww -man -z` says nothing about the page."""
    assert lint(MAN / page) == ""


@needs_groff
def test_lint_catches_a_broken_page(tmp_path: Path) -> None:
    """The check has teeth: an unknown macro and a bad escape in a copy are reported."""
    broken = tmp_path / "tracerd.8"
    broken.write_text((MAN / "tracerd.8").read_text().replace(".SH SECURITY\n", ".SX SECURITY\n\\fQoops\n"))
    assert lint(broken) != ""


@pytest.mark.parametrize("page", PAGES)
def test_page_has_the_postfix_sections_in_order(page: str) -> None:
    """NAME, SYNOPSIS, DESCRIPTION, SECURITY, DIAGNOSTICS, FILES, SEE ALSO, in that order, and a .TH
    naming the page and its section."""
    text = (MAN / page).read_text()
    name, section = page.rsplit(".", 1)
    assert text.startswith(f".TH {name.upper()} {section} ")
    headings = [h.strip('"') for h in re.findall(r"^\.SH (.+)$", text, flags=re.MULTILINE)]
    assert headings == SECTIONS
    assert re.search(rf"^{re.escape(name)} \\- \S", text, flags=re.MULTILINE), "NAME line: name \\- summary"


def test_pages_name_the_installed_paths() -> None:
    """The FILES sections name where `make install` puts the commands: sbin for hook and daemon, bin for tracerctl."""
    assert ".B /usr/local/sbin/pftrace-hook\n" in (MAN / "pftrace-hook.8").read_text()
    assert ".B /usr/local/sbin/tracerd\n" in (MAN / "tracerd.8").read_text()
    assert ".B /usr/local/bin/tracerctl\n" in (MAN / "tracerctl.8").read_text()
    for page in PAGES:
        assert "/usr/local/bin/pftrace-hook" not in (MAN / page).read_text()
        assert "/usr/local/bin/tracerd" not in (MAN / page).read_text()


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
@pytest.mark.parametrize("page", PAGES)
def test_man_l_renders_the_page(page: str) -> None:
    """`man -l` renders the page with its sections, and its warnings are empty."""
    result = subprocess.run(
        ["man", "--warnings", "-l", str(MAN / page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for section in SECTIONS:
        assert f"\n{section}\n" in result.stdout



def tracerctl_commands() -> set[str]:
    from tracerd.ctl.main import build_parser  # noqa: PLC0415 -- only this test needs the parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


@needs_groff
def test_each_tracerctl_command_is_its_own_tagged_paragraph() -> None:
    """In tracerctl(8) every command's entry opens its own .TP (or .TQ) paragraph:
    rendered, its head starts a line at the tag's indent, never inside the
    previous command's text (``gdb`` once ran into ``retrace``'s paragraph)."""
    page = MAN / "tracerctl.8"
    source = page.read_text()
    documented = {name for name in tracerctl_commands()
                  if re.search(rf"^\\fB{re.escape(name)}\\fR", source, flags=re.MULTILINE)}  # fmt: skip
    assert {"retrace", "gdb", "triage", "crash-delete"} <= documented
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", str(page)], capture_output=True, text=True,
                              timeout=60, check=True).stdout  # fmt: skip
    for name in sorted(documented):
        assert re.search(rf"^ {{7}}{re.escape(name)}( |$)", rendered, flags=re.MULTILINE), f"{name}: not a tag"
