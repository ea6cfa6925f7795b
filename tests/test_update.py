"""`copier update`: a generated project takes a newer template release and keeps its own work.

A template repository is built in a temporary directory from this repository's
committed tree (`git archive HEAD`), tagged 1.0.0, then changed the way a real
release would change it and tagged 1.1.0: a changed comment in compose.yaml, a
new file, and static/css/site.css renamed to app.css, with the migration that
moves a project's edited copy along. Each test renders 1.0.0, commits it,
makes the edits a team would make, and updates with real copier runs.
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

import pytest
import yaml
from conftest import DEFAULTS, FRAMEWORKS, ROOT, Stack, booted, free_port, prepare_images
from packaging.version import InvalidVersion, Version

V1, V2 = "1.0.0", "1.1.0"
COMPOSE_MARK = "[changed in template 1.1.0]"
NEW_FILE = "docs/template-1.1.0.md"
USER_CSS = "/* Added by the project: the brand colour. */\nbody {\n  background: #fdf6e3;\n}\n"
USER_README = "This paragraph was rewritten by the team that owns the project, after it was generated."
MARKER = re.compile(r"^(<<<<<<<|>>>>>>>)( |$)", re.MULTILINE)
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
    found = [name for name, content in files(project).items() if name.endswith((".rej", ".orig"))]
    found += [
        name for name, content in files(project).items() if MARKER.search(content.decode("utf-8", "replace"))
    ]
    found += git(project, "diff", "--name-only", "--diff-filter=U").split()
    return sorted(set(found))


# --- the template repository, with two releases --------------------------------------------


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


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory) -> Path:
    """This repository's committed tree as release 1.0.0, and a 1.1.0 on top of it."""
    repo = tmp_path_factory.mktemp("template") / "repo"
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


# --- the project's own work ------------------------------------------------------------------

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


def make_user_edits(project: Path, framework: str) -> dict[str, bytes]:
    """Edit app code, a setting, .env, the README and the stylesheet; commit. Returns .env's bytes."""
    slug = answers(project)["project_slug"]
    views_name, code = USER_CODE[framework]
    views = project / slug / views_name
    views.write_text(views.read_text() + code)
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

    readme = project / "README.md"
    paragraphs = readme.read_text().split("\n\n")
    first = next(i for i, paragraph in enumerate(paragraphs) if not paragraph.startswith("#"))
    paragraphs[first] = USER_README
    readme.write_text("\n\n".join(paragraphs))

    css = project / "static" / "css" / "site.css"
    css.write_text(css.read_text() + "\n" + USER_CSS)

    env = project / ".env"
    env.write_text(env.read_text() + "\n# Set by the team.\nLOG_LEVEL=WARNING\n")
    commit_all(project, "The team's own changes")
    return {".env": env.read_bytes()}


USER_TOUCHED = {"README.md", "gunicorn.conf.py", "static/css/app.css", ".env"}


def user_touched(framework: str, slug: str) -> set[str]:
    touched = USER_TOUCHED | {f"{slug}/{USER_CODE[framework][0]}"}
    return touched | ({"config/urls.py"} if framework == "django" else set())


# --- update a project with the team's edits from 1.0.0 to 1.1.0 ------------------------------


@pytest.fixture(scope="module", params=FRAMEWORKS)
def updated(request, template_repo, tmp_path_factory):
    """A 1.0.0 project with the team's edits, updated to 1.1.0 by scripts/update-template."""
    framework = request.param
    base = tmp_path_factory.mktemp(f"update-{framework}")
    project = generate(template_repo, base / "project", V1, framework=framework)
    before = make_user_edits(project, framework)
    result = run("scripts/update-template", "--vcs-ref", V2, cwd=project, check=False)
    fresh = generate(template_repo, base / "fresh", V2, framework=framework)
    return {"framework": framework, "project": project, "before": before, "result": result, "fresh": fresh}


def test_update_reports_no_conflicts(updated):
    result = updated["result"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"template {V1} -> {V2}" in result.stdout
    assert "no conflicts" in result.stdout
    assert conflicts(updated["project"]) == []


def test_commit_in_answers_moves_to_the_new_release(updated):
    assert answers(updated["project"])["_commit"] == V2


def test_env_is_byte_for_byte_unchanged(updated):
    assert (updated["project"] / ".env").read_bytes() == updated["before"][".env"]


def test_the_teams_edits_are_kept(updated):
    project, framework = updated["project"], updated["framework"]
    slug = answers(project)["project_slug"]
    assert USER_CODE[framework][1] in (project / slug / USER_CODE[framework][0]).read_text()
    if framework == "django":
        assert 'path("hello", views.hello)' in (project / "config" / "urls.py").read_text()
    assert re.search(r"^timeout = 45$", (project / "gunicorn.conf.py").read_text(), re.MULTILINE)
    readme = (project / "README.md").read_text()
    assert USER_README in readme


def test_the_migration_moved_the_edited_stylesheet(updated):
    project = updated["project"]
    assert not (project / "static" / "css" / "site.css").exists()
    stylesheet = (project / "static" / "css" / "app.css").read_text()
    assert stylesheet.endswith(USER_CSS)
    # The template's own rules are still there, above the team's.
    template_css = (updated["fresh"] / "static" / "css" / "app.css").read_text()
    assert stylesheet.startswith(template_css.rstrip("\n"))


def test_the_releases_changes_arrive(updated):
    project = updated["project"]
    assert (project / "compose.yaml").read_text().splitlines()[0].endswith(COMPOSE_MARK)
    assert (project / NEW_FILE).is_file()


def test_untouched_files_equal_a_fresh_render_of_the_new_release(updated):
    """Every file the team did not touch is exactly what 1.1.0 renders: no
    markers, no stale content; and no file is left over from 1.0.0."""
    project, fresh = files(updated["project"]), files(updated["fresh"])
    slug = answers(updated["project"])["project_slug"]
    touched = user_touched(updated["framework"], slug)
    assert sorted(set(project) - set(fresh) - touched) == []
    assert sorted(set(fresh) - set(project)) == []
    differ = [name for name in fresh if name not in touched and project[name] != fresh[name]]
    assert differ == []


def test_secrets_stay_in_env_only(updated):
    """The secrets generated into .env appear in no other file, answers included."""
    project = updated["project"]
    env = dict(
        line.split("=", 1)
        for line in (project / ".env").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    )
    secrets = [env["SECRET_KEY"], env["POSTGRES_PASSWORD"]]
    assert all(len(secret) >= 32 for secret in secrets)
    leaks = [
        name
        for name, content in files(project).items()
        if name != ".env" and any(s.encode() in content for s in secrets)
    ]
    assert leaks == []


@pytest.mark.docker
def test_updated_project_boots_and_its_tests_pass(updated, request):
    """One boot per framework: the production stack through nginx, then the
    project's own test suite in its development image (default compose files)."""
    project = updated["project"]
    with booted(project, request) as stack:
        for path in ("/healthz", "/readyz"):
            response = stack.get(path)
            assert response.status_code == 200, (path, response.text)
        assert stack.get("/hello").json() == {"hello": "world"}
        assert USER_CSS.strip() in stack.get("/static/css/app.css").text
        assert "css/app" in stack.get("/").text

    dev = Stack(project, files=("compose.yaml", "compose.override.yaml"))
    dev.env.update(POSTGRES_PORT=str(free_port()), APP_PORT=str(free_port()))
    try:
        tests = dev.compose("run", "--rm", "--build", "app", "pytest", check=False)
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert " passed" in tests.stdout and " failed" not in tests.stdout
    finally:
        dev.down()


# --- changing answers during an update -------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_update_can_change_answers(template_repo, tmp_path, framework):
    """`copier update --data` re-renders with the new answers: the result is a
    fresh render of the new release with those answers, and .env stays."""
    project = generate(template_repo, tmp_path / "project", V1, framework=framework)
    env = (project / ".env").read_bytes()
    changed = {"python_version": "3.13", "domain": "shop.example.org"}
    result = copier(
        "update",
        "--defaults",
        "--trust",
        "--vcs-ref",
        V2,
        *[a for key, value in changed.items() for a in ("--data", f"{key}={value}")],
        cwd=project,
    )
    assert "scripts/upgrade-postgres" in result.stdout + result.stderr  # the after-update message
    recorded = answers(project)
    assert (recorded["python_version"], recorded["domain"], recorded["_commit"]) == (
        "3.13",
        "shop.example.org",
        V2,
    )
    assert recorded["email"] == DEFAULTS["email"]
    assert "python:3.13-slim" in (project / "Dockerfile").read_text()
    assert "shop.example.org" in (project / "compose.yaml").read_text()
    assert (project / ".env").read_bytes() == env
    assert conflicts(project) == []
    fresh = generate(template_repo, tmp_path / "fresh", V2, framework=framework, **changed)
    new, expected = files(project), files(fresh)
    assert sorted(set(new) ^ set(expected)) == []
    assert [name for name in expected if name != ".env" and new[name] != expected[name]] == []


# --- the project's own update command --------------------------------------------------------


def test_update_template_help(template_repo, tmp_path):
    project = generate(template_repo, tmp_path / "project", V1)
    result = run("scripts/update-template", "--help", cwd=project)
    assert "--defaults --trust --conflict inline" in result.stdout
    assert "Exit status" in result.stdout
    assert answers(project)["_commit"] == V1


def test_update_template_takes_the_newest_release_in_a_shallow_clone(template_repo, tmp_path):
    """As in the scheduled workflow: a depth-1 checkout, no --vcs-ref, no copier
    flags; then, at the newest release, a second run has nothing to do."""
    origin = generate(template_repo, tmp_path / "origin", V1)
    clone = tmp_path / "clone"
    run("git", "clone", "--quiet", "--depth", "1", f"file://{origin}", clone, cwd=tmp_path)
    shutil.copy2(origin / ".env", clone / ".env")
    result = run("scripts/update-template", cwd=clone, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert answers(clone)["_commit"] == V2
    assert conflicts(clone) == []
    commit_all(clone, "Update the template")
    again = run("scripts/update-template", cwd=clone, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already at the newest template release, {V2}" in again.stdout
    assert git(clone, "status", "--porcelain") == ""


def test_update_template_refuses_a_dirty_tree(template_repo, tmp_path):
    project = generate(template_repo, tmp_path / "project", V1)
    (project / "README.md").write_text("work in progress\n")
    result = run("scripts/update-template", "--vcs-ref", V2, cwd=project, check=False)
    assert result.returncode == 2
    assert "commit or stash your changes first" in result.stderr
    assert answers(project)["_commit"] == V1


def test_update_template_exits_1_and_names_conflicted_files(template_repo, tmp_path):
    """The team changed the very line the release changes: the update goes
    through, the file carries both versions between markers, and the script
    says which file and exits 1."""
    project = generate(template_repo, tmp_path / "project", V1)
    compose = project / "compose.yaml"
    lines = compose.read_text().splitlines(keepends=True)
    lines[0] = "# Our production stack, as the team describes it.\n"
    compose.write_text("".join(lines))
    commit_all(project, "Our own compose comment")
    result = run("scripts/update-template", "--vcs-ref", V2, cwd=project, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CONFLICTS in 1 file(s)" in result.stderr
    assert re.search(r"^  compose\.yaml$", result.stderr, re.MULTILINE)
    text = compose.read_text()
    assert "<<<<<<< before updating" in text and ">>>>>>> after updating" in text
    assert "as the team describes it" in text and COMPOSE_MARK in text
    assert conflicts(project) == ["compose.yaml"]


# --- migrations ------------------------------------------------------------------------------


def test_copier_yml_migrations_are_honest():
    """Each migration of the real template names a released version that the
    changelog describes, and runs a script that exists."""
    config = yaml.safe_load((ROOT / "copier.yml").read_text())
    changelog = (ROOT / "CHANGELOG.md").read_text()
    for migration in config.get("_migrations") or []:
        assert isinstance(migration, dict) and "version" in migration, migration
        Version(migration["version"])
        assert re.search(rf"^## .*\b{re.escape(migration['version'])}\b", changelog, re.MULTILINE), migration
        command = migration["command"]
        scripts = re.findall(
            r"copier-migrations/[\w.]+", " ".join(command) if isinstance(command, list) else command
        )
        assert scripts and all((ROOT / script).is_file() for script in scripts), migration


def test_release_tags_are_pep_440_and_in_the_changelog():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## ", changelog, re.MULTILINE)
    for tag in git(ROOT, "tag", "--list").split():
        try:
            Version(tag)
        except InvalidVersion:
            pytest.fail(f"tag {tag!r} is not a PEP 440 version: copier would not see it as a release")
        assert re.search(rf"^## .*\b{re.escape(tag)}\b", changelog, re.MULTILINE), (
            f"CHANGELOG.md has no entry for {tag}"
        )


def test_no_secret_question_is_rendered_into_tracked_files():
    """`secret: true` answers are not recorded, so `copier update --defaults`
    would reset them: they may only feed files written once (_skip_if_exists)."""
    config = yaml.safe_load((ROOT / "copier.yml").read_text())
    secret = [name for name, spec in config.items() if isinstance(spec, dict) and spec.get("secret")]
    once = set(config.get("_skip_if_exists") or [])
    for path in (ROOT / "template").rglob("*"):
        if (
            path.is_file()
            and path.relative_to(ROOT / "template").as_posix().removesuffix(".jinja") not in once
        ):
            text = path.read_text(errors="replace")
            assert not [name for name in secret if re.search(rf"\b{name}\b", text)], path


def make_mini_template(
    repo: Path, version: str, question: str, notes_path: str, notes: str, migrations: str
) -> None:
    """A tiny template: one question, a plain notes file, and the real migration scripts."""
    (repo / "template").mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "copier-migrations", repo / "copier-migrations", dirs_exist_ok=True)
    (repo / "copier.yml").write_text(
        f"_subdirectory: template\n_migrations:\n{migrations}\n{question}:\n  type: str\n  default: nobody\n"
    )
    for old in (repo / "template").rglob("*"):
        if old.is_file():
            old.unlink()
    (repo / "template" / "owner.txt.jinja").write_text(f"Owner: {{{{ {question} }}}}\n")
    (repo / "template" / notes_path).parent.mkdir(parents=True, exist_ok=True)
    (repo / "template" / notes_path).write_text(notes)
    (repo / "template" / "{{ _copier_conf.answers_file }}.jinja").write_text(
        "# Changes here will be overwritten by Copier\n{{ _copier_answers | to_nice_yaml }}"
    )
    commit_all(repo, version)
    git(repo, "tag", version)


def test_migrations_rename_a_question_and_merge_edits_into_a_renamed_file(tmp_path):
    """2.0.0 renames the question `owner` to `maintainer` and moves notes.txt to
    docs/notes.txt while changing its first line; the project had edited its
    last line. Both changes end up in docs/notes.txt, and the answer survives."""
    repo = tmp_path / "template"
    repo.mkdir()
    git(repo, "init", "--quiet")
    lines = [f"line {n}\n" for n in range(1, 11)]
    make_mini_template(repo, "1.0.0", "owner", "notes.txt", "".join(lines), "  []")
    migrations = (
        '  - version: "2.0.0"\n'
        "    when: \"{{ _stage == 'before' }}\"\n"
        '    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/copier-migrations/rename_answer.py",'
        ' "owner", "maintainer"]\n'
        '  - version: "2.0.0"\n'
        '    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/copier-migrations/move_file.py",'
        ' "notes.txt", "docs/notes.txt"]'
    )
    make_mini_template(
        repo, "2.0.0", "maintainer", "docs/notes.txt", "".join(["LINE 1\n", *lines[1:]]), migrations
    )

    project = tmp_path / "project"
    copier("copy", "--quiet", "--vcs-ref", "1.0.0", "--data", "owner=Ada", repo, project, cwd=tmp_path)
    git(project, "init", "--quiet")
    notes = project / "notes.txt"
    notes.write_text(notes.read_text().replace("line 10\n", "line 10, as the project wrote it\n"))
    commit_all(project, "project")

    untrusted = copier("update", "--defaults", "--vcs-ref", "2.0.0", cwd=project, check=False)
    assert untrusted.returncode != 0 and "migrations" in untrusted.stderr
    assert answers(project)["_commit"] == "1.0.0"

    copier("update", "--defaults", "--trust", "--vcs-ref", "2.0.0", cwd=project)
    recorded = answers(project)
    assert recorded["maintainer"] == "Ada" and "owner" not in recorded
    assert (project / "owner.txt").read_text() == "Owner: Ada\n"
    assert not notes.exists()
    merged = (project / "docs" / "notes.txt").read_text()
    assert merged.startswith("LINE 1\n") and merged.endswith("line 10, as the project wrote it\n")
    assert conflicts(project) == []

    # Run again, after the update is committed: nothing left to do.
    commit_all(project, "update")
    for script, args in (
        ("move_file.py", ["notes.txt", "docs/notes.txt"]),
        ("rename_answer.py", ["owner", "maintainer"]),
    ):
        result = run(sys.executable, ROOT / "copier-migrations" / script, *args, cwd=project)
        assert "nothing to" in result.stdout
    assert git(project, "status", "--porcelain") == ""


# --- updating from this repository's own releases --------------------------------------------


def release_tags() -> list[str]:
    tags = []
    for tag in subprocess.run(
        ["git", "tag", "--list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split():
        try:
            tags.append((Version(tag), tag))
        except InvalidVersion:
            continue
    return [tag for _, tag in sorted(tags)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_update_from_the_latest_real_release_to_head(tmp_path, framework):
    """A project generated from the newest tag of this repository (older than
    HEAD) updates to the working tree without conflicts, keeping the team's edits."""
    head = git(ROOT, "rev-parse", "HEAD").strip()
    tags = [tag for tag in release_tags() if git(ROOT, "rev-list", "-n", "1", tag).strip() != head]
    if not tags:
        pytest.skip("this repository has no release tag older than HEAD yet")
    project = generate(ROOT, tmp_path / "project", tags[-1], framework=framework)
    before = make_user_edits_without_rename(project, framework)
    copier("update", "--defaults", "--trust", "--vcs-ref", "HEAD", cwd=project)
    assert conflicts(project) == []
    assert (project / ".env").read_bytes() == before
    assert USER_README in (project / "README.md").read_text()
    assert (
        USER_CODE[framework][1]
        in (project / answers(project)["project_slug"] / USER_CODE[framework][0]).read_text()
    )
    assert answers(project)["_commit"] != tags[-1]


def make_user_edits_without_rename(project: Path, framework: str) -> bytes:
    slug = answers(project)["project_slug"]
    views_name, code = USER_CODE[framework]
    views = project / slug / views_name
    views.write_text(views.read_text() + code)
    readme = project / "README.md"
    paragraphs = readme.read_text().split("\n\n")
    first = next(i for i, paragraph in enumerate(paragraphs) if not paragraph.startswith("#"))
    paragraphs[first] = USER_README
    readme.write_text("\n\n".join(paragraphs))
    env = project / ".env"
    env.write_text(env.read_text() + "LOG_LEVEL=WARNING\n")
    commit_all(project, "The team's own changes")
    return env.read_bytes()


# --- a PostgreSQL major upgrade --------------------------------------------------------------


def psql(stack: Stack, sql: str) -> str:
    result = stack.compose(
        "exec",
        "-T",
        "db",
        "sh",
        "-c",
        'psql -X -q -A -t -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"',
        input=sql,
    )
    return result.stdout.strip()


@pytest.mark.docker
def test_postgres_major_change_keeps_the_data(template_repo, tmp_path):
    """A project with data on PostgreSQL 17 changes postgres_version to 18: the
    update warns and leaves the database alone; scripts/upgrade-postgres dumps,
    restores into 18 on a fresh volume, verifies, and keeps the old cluster. A
    restore that fails puts the old cluster back, and a second run succeeds."""
    project = generate(template_repo, tmp_path / "project", V1, postgres_version=17)
    prepare_images(project)
    stack = Stack(project)
    env = {**ENV, "COMPOSE_PROJECT_NAME": stack.name, "HTTP_PORT": str(stack.http_port)}
    try:
        stack.compose("up", "--detach", "--wait", "db")
        psql(
            stack,
            """
            CREATE TABLE note (id serial PRIMARY KEY, body text NOT NULL UNIQUE);
            INSERT INTO note (body) VALUES ('first'), ('zweite Notiz, äöü'), ('third');
            CREATE TABLE empty_table (id int);
            CREATE ROLE reader;
            GRANT SELECT ON note TO reader;
            -- pg_dump's documented blind spot: a CHECK constraint that reads another
            -- table fails on restore when that table's rows are loaded later.
            CREATE TABLE zz_allowed (name text PRIMARY KEY);
            INSERT INTO zz_allowed VALUES ('yes');
            CREATE FUNCTION is_allowed(text) RETURNS boolean LANGUAGE sql
                AS 'SELECT EXISTS (SELECT FROM public.zz_allowed WHERE name = $1)';
            CREATE TABLE guarded (name text CHECK (is_allowed(name)));
            INSERT INTO guarded VALUES ('yes');
        """,
        )

        update = run(
            "scripts/update-template",
            "--vcs-ref",
            V2,
            "--data",
            "postgres_version=18",
            cwd=project,
            check=False,
        )
        assert update.returncode == 0, update.stdout + update.stderr
        assert "postgres_version changed, 17 -> 18" in update.stderr
        assert "scripts/upgrade-postgres" in update.stderr
        assert "image: postgres:18" in (project / "compose.yaml").read_text()
        # The update touched files only: the database still runs on 17, data intact.
        assert psql(stack, "SHOW server_version_num").startswith("17")
        commit_all(project, "Update the template, PostgreSQL 18")
        prepare_images(project)

        failed = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
        assert failed.returncode != 0, failed.stdout + failed.stderr
        assert "holds PostgreSQL 17 again, as before" in failed.stderr, failed.stdout + failed.stderr
        assert clusters(stack) == ["17 PG_VERSION"]

        # Fix the cause on 17, the way a team would: the old compose.yaml, for a moment.
        git(project, "checkout", "HEAD~1", "--", "compose.yaml")
        stack.compose("up", "--detach", "--wait", "db")
        psql(stack, "DROP TABLE guarded; DROP FUNCTION is_allowed")
        stack.compose("stop", "db")
        git(project, "checkout", "HEAD", "--", "compose.yaml")

        upgrade = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        assert "verified: 3 tables, as many rows as before" in upgrade.stdout

        assert psql(stack, "SHOW server_version_num").startswith("18")
        assert (
            psql(stack, "SELECT string_agg(body, '|' ORDER BY id) FROM note")
            == "first|zweite Notiz, äöü|third"
        )
        assert psql(stack, "INSERT INTO note (body) VALUES ('fourth') RETURNING id") == "4"
        assert psql(stack, "SELECT has_table_privilege('reader', 'note', 'SELECT')") == "t"
        assert clusters(stack) == ["18 18/docker/PG_VERSION"]
        backups = backup_volumes(stack)
        assert len(backups) == 2 and all(
            re.fullmatch(rf"{stack.name}_db-data-pg17-\d{{14}}", b) for b in backups
        )

        again = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
        assert again.returncode == 0 and "already holds PostgreSQL 18: nothing to upgrade" in again.stdout
    finally:
        stack.down()
        for volume in backup_volumes(stack):
            subprocess.run(["docker", "volume", "rm", volume], capture_output=True, check=False)
    gone = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
    assert gone.returncode == 0 and "no db-data volume" in gone.stdout


def clusters(stack: Stack) -> list[str]:
    """The PostgreSQL clusters in the db-data volume: "MAJOR PATH/PG_VERSION"."""
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--volume",
            f"{stack.name}_db-data:/volume:ro",
            "--entrypoint",
            "sh",
            "postgres:18",
            "-c",
            'for f in /volume/PG_VERSION /volume/*/docker/PG_VERSION; do [ -s "$f" ] && echo "$(cat "$f") ${f#/volume/}"; done; true',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split("\n")[:-1]


def backup_volumes(stack: Stack) -> list[str]:
    return subprocess.run(
        [
            "docker",
            "volume",
            "ls",
            "--quiet",
            "--filter",
            f"label=upgrade-postgres.from={stack.name}_db-data",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def test_upgrade_postgres_help(template_repo, tmp_path):
    project = generate(template_repo, tmp_path / "project", V1)
    result = run("scripts/upgrade-postgres", "--help", cwd=project)
    assert "Usage: scripts/upgrade-postgres" in result.stdout and "--yes" in result.stdout
    assert run("scripts/upgrade-postgres", "--bogus", cwd=project, check=False).returncode == 2
