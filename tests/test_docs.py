"""The generated reference pages (docs/commands.md, docs/training.md) match the code, and every
relative link in README.md and docs/ points to a file in the repository."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = runpy.run_path(str(ROOT / "scripts" / "make_docs.py"))


@pytest.mark.parametrize("name", sorted(GENERATOR["PAGES"]))
def test_generated_page_is_up_to_date(name):
    assert (ROOT / name).read_text() == GENERATOR["PAGES"][name](), (
        f"{name} is out of date: run python scripts/make_docs.py"
    )


def test_every_command_and_config_key_is_on_the_pages():
    commands, training = (ROOT / "docs" / "commands.md").read_text(), (ROOT / "docs" / "training.md").read_text()
    for command in ("sabun demo", "sabun toyworld pretrain", "sabun lora resize", "sabun render model"):
        assert f"## `{command}`" in commands
    for key in ("`max_steps`", "`rank`", "`caption_policy`", "`steps_per_round`", "`resize_rank`"):
        assert key in training


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_stay_in_the_repository_and_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("https://", "http://", "#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == []
