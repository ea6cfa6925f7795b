"""The documentation site: a strict build, and pages that match the template.

The site is built once per run the way `nox -s docs` builds it (scripts/docs.py),
into a temporary directory. Then each check compares what the pages say with
what the template and a rendered project actually have: the scripts' --help,
the questions, the .env variables, and every command, file or variable that a
hand-written page names.
"""

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

spec = importlib.util.spec_from_file_location("docs", ROOT / "scripts" / "docs.py")
docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs)

HAND_WRITTEN = sorted(docs.SOURCE.rglob("*.md"))
# Made by the scripts on first use, so absent from a freshly rendered project.
CREATED_AT_RUN_TIME = {"backups/"}


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    return docs.render_projects(tmp_path_factory.mktemp("projects"))


@pytest.fixture(scope="module")
def site(projects, tmp_path_factory) -> Path:
    """The assembled pages; the built site is beside them, in site/."""
    pages = docs.assemble(projects, tmp_path_factory.mktemp("docs") / "pages")
    docs.check_navigation(pages)
    assert docs.zensical("build", pages) == 0, "the strict build failed: its warnings are above"
    return pages


def help_of(project: Path, name: str) -> str:
    result = subprocess.run(
        ["bash", f"scripts/{name}", "--help"], cwd=project, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.rstrip("\n")


def test_the_site_is_built_with_every_page_and_diagram(site):
    built = site.parent / "site"
    for page in docs.nav_pages(docs.tomllib.loads((ROOT / "zensical.toml").read_text())["project"]["nav"]):
        html = built / page.removesuffix(".md").removesuffix("index") / "index.html"
        assert html.is_file(), page
    images = re.findall(r'<img[^>]* src="([^"]+\.svg)"', (built / "architecture" / "index.html").read_text())
    assert len(images) == 3
    for image in images:
        assert "<svg" in (built / "architecture" / image).resolve().read_text()[:2000], image


def test_a_broken_link_or_a_page_left_out_of_the_nav_fails_the_build(site, tmp_path):
    pages = tmp_path / "pages"
    shutil.copytree(site, pages)
    stray = pages / "guides" / "stray.md"
    stray.write_text("# Stray\n")
    with pytest.raises(SystemExit, match="guides/stray.md is not in zensical.toml's nav"):
        docs.check_navigation(pages)
    stray.unlink()
    with (pages / "guides" / "deploy.md").open("a") as page:
        page.write("\nSee [the old guide](deploying.md).\n")
    assert docs.zensical("build", pages) != 0


def test_the_screenshots_taken_are_shown_on_getting_started(projects, tmp_path, monkeypatch):
    """Chromium's screenshots (tests/test_stack.py takes them) go onto the page
    with their captions; a build without them shows none."""
    monkeypatch.setattr(docs.screenshots, "SCREENSHOTS", tmp_path / "shots")
    pages = docs.assemble(projects, tmp_path / "without" / "pages")
    assert "screenshots/" not in (pages / "getting-started.md").read_text()
    (tmp_path / "shots").mkdir()
    for taken in docs.screenshots.PAGES.values():
        for name in taken:
            (tmp_path / "shots" / name).write_bytes(b"\x89PNG " + name.encode())
    pages = docs.assemble(projects, tmp_path / "with" / "pages")
    page = (pages / "getting-started.md").read_text()
    for taken in docs.screenshots.PAGES.values():
        for name, (_, caption) in taken.items():
            assert f"![{caption}](screenshots/{name})" in page
            assert (pages / "screenshots" / name).read_bytes() == b"\x89PNG " + name.encode()


def test_each_scripts_help_in_the_docs_is_what_the_script_prints(site, projects):
    page = (site / "reference" / "scripts.md").read_text()
    documented = dict(re.findall(r"^## `scripts/([\w.-]+)`\n\n```text\n(.*?)\n```$", page, re.M | re.S))
    project = projects["flask"]
    scripts = {
        path.name
        for path in (project / "scripts").iterdir()
        if path.is_file() and os.access(path, os.X_OK) and path.name not in ("lib.sh", "server.sh")
    }
    assert set(documented) == scripts
    for name, text in documented.items():
        assert text == help_of(project, name), f"scripts/{name} --help differs from the docs"


def test_every_question_and_variable_is_in_the_reference(site, projects):
    questions = yaml.safe_load((ROOT / "copier.yml").read_text())
    asked = [
        name for name, spec in questions.items() if not name.startswith("_") and spec.get("when") is not False
    ]
    page = (site / "reference" / "questions.md").read_text()
    assert re.findall(r"^## `(\w+)`$", page, re.M) == asked
    for name in asked:
        help_text = " ".join(questions[name]["help"].split())
        assert help_text in page, name
    page = (site / "reference" / "environment.md").read_text()
    headings = " ".join(re.findall(r"^## (.*)$", page, re.M))
    for project in projects.values():
        for name in re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", (project / ".env.example").read_text(), re.M):
            assert f"`{name}`" in headings, name


def test_every_doc_of_the_generated_project_is_on_the_site(projects):
    for project in projects.values():
        names = {f"docs/{path.name}" for path in (project / "docs").glob("*.md")}
        assert names | {"README.md"} == set(docs.PROJECT_PAGES)


def spans(page: Path) -> list[str]:
    """Inline code, and the lines of fenced code blocks, of a Markdown page."""
    text = page.read_text()
    blocks = re.findall(r"^ *```\w*\n(.*?)^ *```$", text, re.M | re.S)
    prose = re.sub(r"^ *```\w*\n.*?^ *```$", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", prose) + [
        line.strip() for block in blocks for line in block.splitlines()
    ]


@pytest.fixture(scope="module")
def names(projects) -> dict[str, set[str]]:
    """What a page may name: the projects' files (paths and bare names), .env variables, other capitals."""
    found = {"paths": set(), "files": set(), "env": set(), "words": set()}
    for project in projects.values():
        for path in project.rglob("*"):
            found["paths"].add(str(path.relative_to(project)))
            found["files"].add(path.name)
            if path.is_file() and path.suffix not in (".lock", ".svg", ".png", ".ico"):
                found["words"].update(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", path.read_text(errors="replace")))
        found["env"].update(
            re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", (project / ".env.example").read_text(), re.M)
        )
    return found


PATH = re.compile(r"\.?[\w-]+(/[\w.-]+)*/?|\.?[\w-]+\.(ya?ml|md|toml|py|sh|txt|json)")


@pytest.mark.parametrize("page", HAND_WRITTEN, ids=lambda page: str(page.relative_to(docs.SOURCE)))
def test_hand_written_pages_name_only_commands_files_and_variables_that_exist(page, projects, names):
    project = projects["flask"]
    helps, problems = {}, []
    for span in spans(page):
        for name, options in re.findall(r"(?:^|\s)scripts/([\w.-]+)(?![\w./-])((?:\s+[^\s#]+)*)", span):
            if not (project / "scripts" / name).is_file():
                problems.append(f"no scripts/{name}")
                continue
            helps.setdefault(name, help_of(project, name))
            for option in re.findall(r"(?<!\S)(--?[a-z][\w-]*)", options):
                if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[name]):
                    problems.append(f"scripts/{name} has no option {option}")
        if re.fullmatch(r"[A-Z][A-Z0-9_]{2,}(=.*)?", span):
            name = span.split("=", 1)[0]
            if name not in names["env"] and name not in names["words"]:
                problems.append(f"no variable {name} in .env.example or the project")
        elif PATH.fullmatch(span) and ("/" in span or "." in span) and span not in CREATED_AT_RUN_TIME:
            known = names["paths"] if "/" in span.rstrip("/") else names["files"]
            if span.rstrip("/") not in known and not (ROOT / span).exists():
                problems.append(f"no file {span} in a rendered project or the repository")
    assert problems == []


def test_the_troubleshooting_advice_is_for_messages_the_scripts_still_print(projects):
    """Each situation the page explains by hand quotes a message of the scripts (HOST and ... for values)."""
    messages = [m for found in docs.failure_messages(projects["flask"]).values() for m in found]
    terms = re.findall(r"^`([^`]+)`\n:   ", (docs.SOURCE / "troubleshooting.md").read_text(), re.M)
    assert len(terms) >= 5
    for term in terms:
        pattern = ".*".join(re.escape(part.strip()) for part in re.split(r"\.\.\.|HOST", term))
        assert any(re.search(pattern, message) for message in messages), f"no script prints {term!r}"
