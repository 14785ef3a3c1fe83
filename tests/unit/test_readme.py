"""The README is a newcomer's map: it must keep up with the settings and the make targets."""

from __future__ import annotations

from tributary.settings import REPO_ROOT, Settings

README = (REPO_ROOT / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    missing = [env for env, _, _ in Settings.from_env().describe() if f"`{env}`" not in README]
    assert not missing, f"document these settings in README.md's configuration table: {missing}"


def test_readme_shows_the_two_commands() -> None:
    assert "make up" in README and "make test" in README
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
