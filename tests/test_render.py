"""Render tests (no Docker): copier questions, validation, and lint-clean output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from copier import run_copy

from conftest import DEFAULTS, FRAMEWORKS, ROOT, render

ALL_VALID = [
    {"framework": framework, "python_version": python, "postgres_version": postgres}
    for framework in FRAMEWORKS
    for python in ("3.14", "3.13")
    for postgres in (18, 17)
]


def rendered_files(project: Path) -> list[Path]:
    return [p for p in project.rglob("*") if p.is_file() and ".git" not in p.parts]


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)


def test_defaults_render_unattended(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "copier",
            "copy",
            "--defaults",
            "--vcs-ref",
            "HEAD",
            str(ROOT),
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    answers = yaml.safe_load((tmp_path / "p" / ".copier-answers.yml").read_text())
    assert answers["project_slug"] == "my_app"
    assert answers["framework"] == "flask"
    assert answers["python_version"] == "3.14"
    assert answers["postgres_version"] == 18
    # All rights reserved unless the user picks a license: no LICENSE file.
    assert answers["license"] == "none"
    assert not (tmp_path / "p" / "LICENSE").exists()
    # The next steps: the deploy and update scripts need a git repository.
    assert "git init && git add . && git commit" in result.stderr + result.stdout


@pytest.mark.parametrize("answers", ALL_VALID, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_each_valid_choice_renders(tmp_path, answers):
    project = render(tmp_path / "p", **answers)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert compose["services"]["db"]["image"] == f"postgres:{answers['postgres_version']}"
    volume = compose["services"]["db"]["volumes"][0]
    expected = "/var/lib/postgresql" if answers["postgres_version"] >= 18 else "/var/lib/postgresql/data"
    assert volume == f"db-data:{expected}"
    assert f"python:{answers['python_version']}-slim" in (project / "Dockerfile").read_text()
    assert (project / ".python-version").read_text().strip() == answers["python_version"]
    package = project / "my_app"
    assert package.is_dir()
    if answers["framework"] == "django":
        assert (project / "manage.py").is_file()
        assert not (project / "migrations").exists()
    else:
        assert (project / "migrations" / "env.py").is_file()
        assert not (project / "manage.py").exists()


def test_slug_is_derived_from_the_name(tmp_path):
    project = render(tmp_path / "p", project_name="Acme Shop-2")
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["project_slug"] == "acme_shop_2"
    assert (project / "acme_shop_2").is_dir()


INVALID = [
    ({"project_name": "   "}, "Enter a name."),
    ({"project_name": "My <App>"}, "Only letters, digits, spaces, .-_"),
    ({"project_name": "_app"}, "Start with a letter or digit."),
    ({"project_slug": "My-App"}, "Start with a lower-case letter."),
    ({"project_slug": "my-app"}, "Use only a-z, 0-9 and _."),
    ({"project_slug": "django"}, "Taken by a module the app uses."),
    ({"project_slug": "json"}, "Taken by the standard library."),
    ({"domain": "https://example.com"}, "Use a plain name like example.com."),
    ({"domain": "-bad.example.com"}, "Use a plain name like example.com."),
    ({"domain": "localhost"}, "Use a public name, like example.com."),
    ({"domain": "203.0.113.10"}, "Use a name, not an IP address."),
    ({"email": "not-an-email"}, "Use the form name@example.com."),
    ({"framework": "rails"}, "framework"),
    ({"python_version": "3.12"}, "python_version"),
    ({"postgres_version": 16}, "postgres_version"),
    ({"license": "WTFPL"}, "license"),
]


@pytest.mark.parametrize(("answers", "message"), INVALID, ids=lambda v: str(v))
def test_invalid_answers_are_rejected_and_nothing_is_written(tmp_path, answers, message):
    destination = tmp_path / "p"
    args = [sys.executable, "-m", "copier", "copy", "--defaults", "--vcs-ref", "HEAD"]
    for key, value in answers.items():
        args += ["--data", f"{key}={value}"]
    result = subprocess.run([*args, str(ROOT), str(destination)], capture_output=True, text=True)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not destination.exists() or not any(destination.iterdir())


def test_validation_error_is_one_clear_line(tmp_path):
    with pytest.raises(Exception) as error:
        run_copy(
            str(ROOT),
            tmp_path / "p",
            data={**DEFAULTS, "domain": "Not A Host"},
            defaults=True,
            vcs_ref="HEAD",
            quiet=True,
        )
    message = str(error.value)
    assert "Use a plain name like example.com." in message
    assert "\n" not in message.strip()


def test_no_template_residue(project):
    for path in rendered_files(project):
        assert not path.name.endswith(".jinja"), path
        assert "{%" not in path.name and "{{" not in path.name, path
        text = path.read_text()
        assert text.strip(), f"{path} is empty"
        if path.name == "uv.lock":
            continue
        # GitHub Actions expressions, ${{ ... }}, belong in the rendered workflows.
        jinja_free = re.sub(r"\$\{\{ [^{}\n]+ \}\}", "", text) if ".github" in path.parts else text
        # The framework's own templates (pages, mail bodies) are Jinja or Django templates.
        framework_template = "templates" in path.parts and path.suffix in (".html", ".txt")
        assert not re.search(r"{%-?\s|\s-?%}|{{\s|\s}}(?!')", jinja_free) or framework_template, path
        # Python style puts two blank lines between top-level definitions; elsewhere one is the most.
        allowed_blank_lines = 2 if path.suffix in (".py", ".mako") else 1
        assert "\n" * (allowed_blank_lines + 2) not in text, f"{path} has a run of blank lines"
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{path} must end with exactly one newline"
        assert not re.search(r"[ \t]+$", text, re.MULTILINE), f"{path} has trailing whitespace"


def test_env_holds_strong_fresh_secrets(tmp_path):
    envs = []
    for name in ("a", "b"):
        project = render(tmp_path / name)
        env = dict(
            line.split("=", 1)
            for line in (project / ".env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        envs.append(env)
        assert re.fullmatch(r"[0-9a-f]{64}", env["SECRET_KEY"])
        assert re.fullmatch(r"[0-9a-f]{40}", env["POSTGRES_PASSWORD"])
        assert len(set(env["SECRET_KEY"])) > 8
        assert ".env" in (project / ".gitignore").read_text().splitlines()
        assert ".env" in (project / ".dockerignore").read_text().splitlines()
    assert envs[0]["SECRET_KEY"] != envs[1]["SECRET_KEY"]
    assert envs[0]["POSTGRES_PASSWORD"] != envs[1]["POSTGRES_PASSWORD"]


def test_env_example_documents_every_variable_compose_reads(project):
    compose = (project / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose))
    documented = set(
        re.findall(r"^#?\s?([A-Z][A-Z0-9_]*)=", (project / ".env.example").read_text(), re.MULTILINE)
    )
    assert used - documented == set()


def test_ruff_passes_on_generated_python(project):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_passes_with_no_warnings(project):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--config", ".hadolint.yaml", "Dockerfile"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_yaml_files_parse(project):
    for path in rendered_files(project):
        if path.suffix in (".yml", ".yaml"):
            assert yaml.safe_load(path.read_text()) is not None, path


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.override.yaml")])
def test_compose_config_is_valid(project, files):
    args = ["docker", "compose"]
    for file in files:
        args += ["-f", file]
    result = subprocess.run([*args, "config", "-q"], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_production_compose_publishes_only_the_port_nginx_answers_on(project):
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    # edge holds the ports; nginx answers on them from edge's network namespace.
    assert published == {"edge"}
    assert compose["services"]["nginx"]["network_mode"] == "service:edge"
    assert (
        compose["services"]["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    )
    assert compose["services"]["nginx"]["depends_on"]["app"]["condition"] == "service_healthy"
    assert "healthcheck" in compose["services"]["db"] and "healthcheck" in compose["services"]["nginx"]


def test_lock_file_covers_pyproject(project):
    """uv.lock names the project and every dependency pyproject.toml asks for.

    Whether it is fully up to date is checked by `uv sync --locked` in the
    Docker build (the stack tests): uv needs the project's Python to lock.
    """
    lock = (project / "uv.lock").read_text()
    names = set(re.findall(r'^name = "([^"]+)"', lock, re.MULTILINE))
    assert "my-app" in names
    pyproject = (project / "pyproject.toml").read_text()
    for requirement in re.findall(r'^    "([a-z][a-z0-9-]*)', pyproject, re.MULTILINE):
        assert requirement in names, f"{requirement} is in pyproject.toml but not in uv.lock"


def shell_scripts(project: Path) -> list[Path]:
    return [
        path
        for path in rendered_files(project)
        if path.suffix == ".sh"
        or path.read_text().startswith(("#!/usr/bin/env bash", "#!/bin/sh", "#!/bin/bash"))
    ]


def test_shell_scripts_pass_shellcheck(project):
    scripts = shell_scripts(project)
    assert len(scripts) >= 5
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck), *map(str, scripts)], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_user_command_has_help(project):
    commands = sorted(p for p in (project / "scripts").iterdir() if p.is_file() and os.access(p, os.X_OK))
    names = {p.name for p in commands}
    assert {"provision", "deploy", "rollback", "backup", "restore", "logs", "status"} <= names
    for command in commands:
        result = subprocess.run(
            [str(command), "--help"], cwd=project, capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 0, f"{command.name} --help: {result.stderr}"
        assert "Usage" in result.stdout or "usage" in result.stdout, f"{command.name} --help prints no usage"


def test_files_follow_the_editorconfig(project):
    config = (project / ".editorconfig").read_text()
    for setting in (
        "charset = utf-8",
        "end_of_line = lf",
        "insert_final_newline = true",
        "indent_style = space",
    ):
        assert setting in config
    for path in rendered_files(project):
        data = path.read_bytes()
        text = data.decode("utf-8")
        assert b"\r" not in data and text.endswith("\n"), path
        assert not re.search(r"^\t", text, re.MULTILINE), f"{path} is indented with tabs"


def test_pre_commit_runs_the_ci_linters_at_the_ci_versions(project):
    """pre-commit validates the file; its pins are those CI uses (uv.lock's ruff, noxfile.py's hadolint)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pre-commit"), "validate-config", ".pre-commit-config.yaml"],
        cwd=project, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert set(hooks) == {"ruff-check", "ruff-format", "shellcheck", "hadolint"}
    lock = (project / "uv.lock").read_text()
    ruff = re.search(r'^name = "ruff"\nversion = "([^"]+)"', lock, re.MULTILINE).group(1)
    hadolint = re.search(r'^HADOLINT = "([^"]+)"', (project / "noxfile.py").read_text(), re.MULTILINE).group(
        1
    )
    assert hooks["ruff-check"]["additional_dependencies"] == [f"ruff=={ruff}"]
    assert hooks["ruff-format"]["additional_dependencies"] == [f"ruff=={ruff}"]
    assert hooks["hadolint"]["additional_dependencies"] == [hadolint]
    assert hooks["hadolint"]["entry"] == "hadolint --config .hadolint.yaml"
    # Extensionless scripts are found by their shebang: the same set the shellcheck test checks.
    assert hooks["shellcheck"]["types"] == ["shell"]
