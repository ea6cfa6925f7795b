"""`copier update`: a generated project takes a newer template release and keeps its own work.

A template repository is built in a temporary directory from this repository's
committed tree (`git archive HEAD`), tagged 1.0.0, then changed the way a real
release would change it and tagged 1.1.0: a changed comment in compose.yaml, a
new file, and static/css/site.css renamed to app.css, with the migration that
moves a project's edited copy along (the `template_repo` fixture, conftest.py).
Each test renders 1.0.0, commits it, makes the edits a team would make, and
updates with real copier runs. The last test updates from this repository's
own newest release to its working tree.

Release policy (CHANGELOG, tags) is in test_release_policy.py; the PostgreSQL
major upgrade in test_postgres_upgrade.py.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULTS, FRAMEWORKS, ROOT, Stack, booted, free_port
from updating import (
    COMPOSE_MARK,
    NEW_FILE,
    USER_CODE,
    USER_CSS,
    USER_README,
    V1,
    V2,
    add_user_code_and_readme,
    answers,
    changelog_releases,
    clone_with_release_tags,
    commit_all,
    conflicts,
    copier,
    files,
    generate,
    git,
    make_user_edits,
    run,
    user_touched,
)

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


# --- copier.yml and migrations ---------------------------------------------------------------


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
        '    command: ["{{ _copier_python }}",'
        ' "{{ _copier_conf.src_path }}/copier-migrations/rename_answer.py", "owner", "maintainer"]\n'
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


# --- updating from this repository's own newest release ---------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_update_from_the_newest_real_release_to_the_working_tree(tmp_path, framework):
    """A project generated from the newest release CHANGELOG.md names (tagged
    here on a throwaway clone, at the commit that added its heading) updates
    to the working tree without conflicts, keeping the team's edits; every
    file the team did not touch is then what the working tree renders."""
    releases = changelog_releases()
    assert releases, "CHANGELOG.md names no release (## VERSION (YYYY-MM-DD))"
    version = releases[0][0]
    template = clone_with_release_tags(tmp_path / "template", version)
    project = generate(template, tmp_path / "project", version, framework=framework)
    assert answers(project)["_commit"] == version

    add_user_code_and_readme(project, framework)
    env = project / ".env"
    env.write_text(env.read_text() + "LOG_LEVEL=WARNING\n")
    commit_all(project, "The team's own changes")
    before = env.read_bytes()

    copier("update", "--defaults", "--trust", "--vcs-ref", "HEAD", cwd=project)
    assert conflicts(project) == []
    assert env.read_bytes() == before
    assert USER_README in (project / "README.md").read_text()
    slug = answers(project)["project_slug"]
    assert USER_CODE[framework][1] in (project / slug / USER_CODE[framework][0]).read_text()
    # git describe of copier's commit of the working tree: "0.1.0-7-g9f664d5".
    assert answers(project)["_commit"].startswith(f"{version}-")

    fresh = generate(template, tmp_path / "fresh", "HEAD", framework=framework)
    # Each copier run commits the working tree anew, so _commit may differ; nothing else may.
    recorded, expected = answers(project), answers(fresh)
    del recorded["_commit"], expected["_commit"]
    assert recorded == expected
    new, rendered = files(project), files(fresh)
    touched = {".env", ".copier-answers.yml", "README.md", f"{slug}/{USER_CODE[framework][0]}"}
    assert sorted(set(new) ^ set(rendered)) == []
    assert [name for name in rendered if name not in touched and new[name] != rendered[name]] == []
