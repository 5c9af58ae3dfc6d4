"""The documentation as a reader follows it: a short front page, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


def test_the_readme_stays_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, "move reference material to docs/"
    assert "## Changelog" not in readme, "the changelog lives in CHANGELOG.md"
    for command in ("make run", "make test"):
        assert command in readme


def test_every_relative_link_in_the_docs_leads_to_a_file() -> None:
    checked = 0
    for page in PAGES:
        for match in LINK.finditer(page.read_text()):
            target = (match.group(1) or match.group(2)).split("#", 1)[0]
            if not target or re.match(r"[a-z]+:", target):
                continue  # an anchor on the same page, or http(s)://, mailto: and the like
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
            checked += 1
    assert checked >= 20
