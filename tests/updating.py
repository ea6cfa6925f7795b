"""Helpers for the update tests (test_update.py, test_release_policy.py,
test_postgres_upgrade.py): git and copier runs, this repository's releases as
CHANGELOG.md names them, a synthetic template repository with two releases,
and the edits a team makes to its generated project.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from conftest import DEFAULTS, ROOT

V1, V2 = "1.0.0", "1.1.0"
COMPOSE_MARK = "[changed in template 1.1.0]"
NEW_FILE = "docs/template-1.1.0.md"
USER_CSS = "/* Added by the project: the brand colour. */\nbody {\n  background: #fdf6e3;\n}\n"
USER_README = "This paragraph was rewritten by the team that owns the project, after it was generated."
MARKER = re.compile(r"^(<<<<<<<|>>>>>>>)( |$)", re.MULTILINE)
# A release's heading in CHANGELOG.md (docs/releasing.md): "## 0.1.0 (2026-11-22)".
RELEASE_HEADING = re.compile(r"^## (\S+) \((\d{4}-\d{2}-\d{2})\)$", re.MULTILINE)
# The environment copier and the project's scripts run with: this interpreter's
# copier first on PATH, and a git identity for the commits the tests make.
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def run(
    *command: str | Path, cwd: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def git(cwd: Path, *args: str) -> str:
    return run("git", *args, cwd=cwd).stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--no-verify", "--message", message)


def copier(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "copier", *args, cwd=cwd, check=check)


def answers(project: Path) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def files(tree: Path) -> dict[str, bytes]:
    return {
        path.relative_to(tree).as_posix(): path.read_bytes()
        for path in sorted(tree.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(tree).parts
    }


def conflicts(project: Path) -> list[str]:
    """Files with conflict markers, rejected hunks, or unmerged index entries."""
    found = [name for name in files(project) if name.endswith((".rej", ".orig"))]
    found += [
        name for name, content in files(project).items() if MARKER.search(content.decode("utf-8", "replace"))
    ]
    found += git(project, "diff", "--name-only", "--diff-filter=U").split()
    return sorted(set(found))


# --- this repository's releases ----------------------------------------------------------------


def changelog_releases(changelog: str | None = None) -> list[tuple[str, str]]:
    """(version, date) of each release CHANGELOG.md describes, newest first, as written."""
    text = (ROOT / "CHANGELOG.md").read_text() if changelog is None else changelog
    return RELEASE_HEADING.findall(text)


def release_commit(repo: Path, version: str) -> str:
    """The commit that gave `version` its CHANGELOG heading: the commit a
    release tags (docs/releasing.md: commit the changelog, then tag it)."""
    found = git(
        repo, "log", "--reverse", "--format=%H", "-S", f"## {version} (", "--", "CHANGELOG.md"
    ).split()
    assert found, (
        f"no commit adds the CHANGELOG heading of {version} to {repo}: "
        "a shallow clone? Fetch the full history (git fetch --unshallow)"
    )
    return found[0]


def working_tree_files(repo: Path) -> list[str]:
    """Tracked and untracked files of a repository, without ignored ones."""
    listed = git(repo, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    return [name for name in listed if name and (repo / name).is_file()]


def clone_with_release_tags(destination: Path, *versions: str) -> Path:
    """A throwaway clone of this repository whose work tree is this one's,
    uncommitted changes included, with each version tagged at its release
    commit (a tag the clone already has is kept)."""
    run("git", "clone", "--quiet", ROOT, destination, cwd=destination.parent)
    for version in versions:
        if not git(destination, "tag", "--list", version).strip():
            commit = release_commit(destination, version)
            git(destination, "tag", "--annotate", version, "--message", version, commit)
    ours = set(working_tree_files(ROOT))
    for name in set(working_tree_files(destination)) - ours:
        (destination / name).unlink()
    for name in ours:
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name, follow_symlinks=False)
    return destination


# --- a synthetic template repository with two releases ------------------------------------------


def add_migration(copier_yml: Path, entry: str) -> None:
    text = copier_yml.read_text()
    if re.search(r"^_migrations: \[\]$", text, re.MULTILINE):
        text = re.sub(r"^_migrations: \[\]$", "_migrations:\n" + entry.rstrip("\n"), text, flags=re.MULTILINE)
    else:
        text, count = re.subn(r"^_migrations:\n", lambda m: m.group(0) + entry, text, flags=re.MULTILINE)
        assert count == 1, "copier.yml has no _migrations list to extend"
    copier_yml.write_text(text)
    assert yaml.safe_load(text)["_migrations"][-1]["version"] == V2


def release_1_1_0(repo: Path) -> None:
    """The changes of the synthetic 1.1.0 release."""
    template = repo / "template"
    compose = template / "compose.yaml.jinja"
    lines = compose.read_text().splitlines(keepends=True)
    assert lines[0].startswith("# ")
    lines[0] = lines[0].rstrip("\n") + f" {COMPOSE_MARK}\n"
    compose.write_text("".join(lines))

    (template / NEW_FILE).parent.mkdir(exist_ok=True)
    (template / NEW_FILE).write_text("# New in template 1.1.0\n\nA file that every project gets on update.\n")

    # Rename the stylesheet, everywhere it is named, and ship the migration
    # that carries a project's edits to the new name.
    git(repo, "mv", "template/static/css/site.css", "template/static/css/app.css")
    for path in template.rglob("*"):
        if path.is_file():
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            # "css/site" also catches regular expressions such as css/site\.[0-9a-f]{12}\.css.
            changed = text.replace("css/site", "css/app").replace("site.css", "app.css")
            if changed != text:
                path.write_text(changed)
    add_migration(
        repo / "copier.yml",
        f'  - version: "{V2}"\n'
        "    command:\n"
        '      - "{{ _copier_python }}"\n'
        '      - "{{ _copier_conf.src_path }}/copier-migrations/move_file.py"\n'
        "      - static/css/site.css\n"
        "      - static/css/app.css\n",
    )


def make_template_repo(repo: Path) -> Path:
    """This repository's committed tree as release 1.0.0, and a 1.1.0 on top of it."""
    repo.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(repo, filter="tar")
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit_all(repo, "Release 1.0.0")
    git(repo, "tag", "--annotate", V1, "--message", V1)
    release_1_1_0(repo)
    commit_all(repo, "Release 1.1.0")
    git(repo, "tag", "--annotate", V2, "--message", V2)
    return repo


def generate(template: Path, destination: Path, ref: str, **data) -> Path:
    """`copier copy` a release of the template, then commit it, as a new project would."""
    arguments = [f"{key}={value}" for key, value in {**DEFAULTS, **data}.items()]
    copier(
        "copy",
        "--quiet",
        "--defaults",
        "--vcs-ref",
        ref,
        *[a for argument in arguments for a in ("--data", argument)],
        template,
        destination,
        cwd=template.parent,
    )
    git(destination, "init", "--quiet", "--initial-branch=main")
    commit_all(destination, f"Generate from template {ref}")
    return destination


# --- the project's own work ----------------------------------------------------------------------

USER_CODE = {
    "flask": (
        "views.py",
        (
            '\n\n@bp.get("/hello")\ndef hello():\n    """Added by the project after it was generated."""\n'
            '    return jsonify(hello="world")\n'
        ),
    ),
    "django": (
        "views.py",
        (
            "\n\ndef hello(request: HttpRequest) -> JsonResponse:\n"
            '    """Added by the project after it was generated."""\n'
            '    return JsonResponse({"hello": "world"})\n'
        ),
    ),
}
USER_TOUCHED = {"README.md", "gunicorn.conf.py", "static/css/app.css", ".env"}


def add_user_code_and_readme(project: Path, framework: str) -> None:
    """A view in the app and the README's first paragraph, rewritten."""
    slug = answers(project)["project_slug"]
    views_name, code = USER_CODE[framework]
    views = project / slug / views_name
    views.write_text(views.read_text() + code)
    readme = project / "README.md"
    paragraphs = readme.read_text().split("\n\n")
    first = next(i for i, paragraph in enumerate(paragraphs) if not paragraph.startswith("#"))
    paragraphs[first] = USER_README
    readme.write_text("\n\n".join(paragraphs))


def make_user_edits(project: Path, framework: str) -> dict[str, bytes]:
    """Edit app code, a setting, .env, the README and the stylesheet; commit. Returns .env's bytes."""
    add_user_code_and_readme(project, framework)
    if framework == "django":
        urls = project / "config" / "urls.py"
        text = urls.read_text()
        assert '    path("admin/", admin.site.urls),\n' in text
        urls.write_text(
            text.replace(
                '    path("admin/", admin.site.urls),\n',
                '    path("admin/", admin.site.urls),\n    path("hello", views.hello),\n',
            )
        )

    gunicorn = project / "gunicorn.conf.py"
    text, count = re.subn(r"^timeout = \d+$", "timeout = 45", gunicorn.read_text(), flags=re.MULTILINE)
    assert count == 1
    gunicorn.write_text(text)

    css = project / "static" / "css" / "site.css"
    css.write_text(css.read_text() + "\n" + USER_CSS)

    env = project / ".env"
    env.write_text(env.read_text() + "\n# Set by the team.\nLOG_LEVEL=WARNING\n")
    commit_all(project, "The team's own changes")
    return {".env": env.read_bytes()}


def user_touched(framework: str, slug: str) -> set[str]:
    touched = USER_TOUCHED | {f"{slug}/{USER_CODE[framework][0]}"}
    return touched | ({"config/urls.py"} if framework == "django" else set())
