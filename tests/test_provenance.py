"""pipeline.provenance.git_state: the commit of the checkout distinit runs from, and nothing from a git repository
that merely surrounds an installed copy (a wheel in a venv inside some checkout)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from distinit.pipeline import provenance

NEEDS_GIT = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@NEEDS_GIT
def test_the_checkout_itself_gives_its_commit():
    if not (provenance.REPOSITORY / ".git").exists():
        pytest.skip("distinit runs from an installed copy here, not a checkout")
    state = provenance.git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", state["git_commit"]) and isinstance(state["git_dirty"], bool)


@NEEDS_GIT
def test_an_installed_copy_inside_another_repository_records_no_commit(tmp_path, monkeypatch):
    surrounding = tmp_path / "home"
    installed = surrounding / ".venv" / "lib" / "site-packages" / "distinit"
    installed.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(surrounding)], check=True)
    subprocess.run(["git", "-C", str(surrounding), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    monkeypatch.setattr(provenance, "REPOSITORY", installed.resolve())
    assert provenance.git_state() == {"git_commit": None, "git_dirty": None}
    monkeypatch.setattr(provenance, "REPOSITORY", surrounding.resolve())  # the same repository, at its top: counts
    assert provenance.git_state()["git_commit"] is not None
