"""The documentation keeps its promises: links resolve, the README's tour runs as shown, every command is documented."""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def broken_links(page: Path) -> list[str]:
    """The relative links of a page whose file, or whose heading, is not there."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    return broken


def tour_commands() -> list[str]:
    tour = (REPO / "README.md").read_text().split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", tour, re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("python -m")]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    page.write_text("[fine](there.md) [fine too](there.md#a-heading) [gone](missing.md) [no](there.md#nope)\n")
    assert broken_links(page) == ["missing.md", "there.md#nope"]


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    assert lines[1].startswith("python3 -m venv .venv") and lines[2].endswith("python -m pytest -q")


def test_the_tour_runs_as_shown(tmp_path):
    """Each command of the README's tour, in order, in a fresh folder holding the sample: exit 0."""
    shutil.copytree(SAMPLE, tmp_path / "examples" / "cifar10-mini")
    commands = tour_commands()
    assert [c.split()[2] for c in commands] == ["extract", "classify", "classify", "pipelines", "pipelines"]
    for command in commands:
        done = subprocess.run(["bash", "-c", command.replace("python -m", f"{sys.executable} -m", 1)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    assert (tmp_path / "reports" / "mini" / "report.md").exists()


def test_a_failing_tour_command_fails_the_test(tmp_path):
    done = subprocess.run(["bash", "-c", f"{sys.executable} -m classify predict cache/*.nothing.joblib x.jpg"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2  # what test_the_tour_runs_as_shown asserts against


def subcommands(module: str) -> list[str]:
    parser = __import__(f"{module}.__main__", fromlist=["build_parser"]).build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices) if actions else []


@pytest.mark.parametrize("module", ["extract", "classify", "pipelines"])
def test_every_subcommand_appears_in_the_docs(module):
    docs = "\n".join(page.read_text() for page in PAGES)
    assert f"python -m {module}" in docs
    missing = [name for name in subcommands(module) if f"python -m {module} {name}" not in docs]
    assert missing == []
