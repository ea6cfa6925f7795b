"""The questions as a person meets them: copier in an 80-column terminal, and
each validator's rules checked against Python and the generated project.

Copier prints a validator's message on one line after "Validation error for
question 'NAME': ", cut at the terminal's width, and stops with a traceback
(every answer lost) when a default fails its own validator. So the answers
are typed into a real pseudo-terminal (pexpect), and every derived default is
checked against the validator that will judge it.
"""

from __future__ import annotations

import keyword
import os
import re
import sys
import time
import tomllib
from pathlib import Path

import pexpect
import pyte
import pytest
import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from packaging.licenses import canonicalize_license_expression

from conftest import FRAMEWORKS, ROOT, render

COLUMNS = 80
CONFIG = yaml.safe_load((ROOT / "copier.yml").read_text())
QUESTIONS = {name: spec for name, spec in CONFIG.items() if not name.startswith("_")}
ASKED = [name for name, spec in QUESTIONS.items() if spec.get("when", True) is not False]
# Computed values (`when: false`): the reserved names the slug's rules use.
COMPUTED = {name: spec["default"] for name, spec in QUESTIONS.items() if name not in ASKED}


def error_line(question: str, message: str) -> str:
    return f"Validation error for question '{question}': {message}"


# --- in a terminal ----------------------------------------------------------


class Terminal:
    """`copier copy` in a pseudo-terminal of COLUMNS columns, answered by typing.

    The output goes through a terminal emulator (pyte): prompt_toolkit redraws
    only what changed, so the screen, not the byte stream, shows what a person sees.
    """

    def __init__(self, destination: Path):
        self.screen = pyte.Screen(COLUMNS, 24)
        self.stream = pyte.Stream(self.screen)
        self.transcript: list[str] = []
        # No cursor position requests: nothing here would answer them.
        env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "copier", "copy", "--vcs-ref", "HEAD", str(ROOT), str(destination)],
            dimensions=(self.screen.lines, COLUMNS), encoding="utf-8", env=env,
        )  # fmt: skip

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def wait(self, what: str, done) -> None:
        deadline = time.monotonic() + 60
        while not done():
            screen = "\n".join(self.lines())
            assert time.monotonic() < deadline, f"no {what} after 60 s; the screen:\n{screen}"
            try:
                data = self.child.read_nonblocking(65536, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                output = "".join(self.transcript)[-3000:]
                raise AssertionError(f"copier ended before {what}:\n{output}") from None
            self.transcript.append(data)
            self.stream.feed(data)

    def shows(self, text: str) -> None:
        self.wait(repr(text), lambda: any(text in line for line in self.lines()))

    def ask(self, question: str) -> None:
        """Wait until copier shows the question (its help's first line)."""
        self.shows(QUESTIONS[question]["help"].splitlines()[0])

    def type(self, text: str | None = None) -> None:
        """Replace the prefilled default with text (None keeps it), then Enter."""
        self.child.send("\r" if text is None else f"\x15{text}\r")

    def refused(self, question: str, message: str) -> None:
        # A whole line of the screen: prompt_toolkit cuts a longer one at the edge.
        line = error_line(question, message)
        self.wait(repr(line), lambda: line in self.lines())

    def finish(self) -> str:
        """What copier printed, without colours, once it has exited cleanly."""
        self.child.expect(pexpect.EOF, timeout=120)
        self.transcript.append(self.child.before)
        self.child.close()
        output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", "".join(self.transcript))
        assert "Traceback" not in output, output[-3000:]
        assert self.child.exitstatus == 0, output[-3000:]
        return output


def test_enter_through_the_defaults_and_get_the_next_steps(tmp_path):
    terminal = Terminal(tmp_path / "my-app")
    for question in ASKED:
        terminal.ask(question)
        terminal.type()
    steps = terminal.finish()
    answers = yaml.safe_load((tmp_path / "my-app" / ".copier-answers.yml").read_text())
    assert {name: answers[name] for name in ASKED} == {name: QUESTIONS[name]["default"] for name in ASKED} | {
        "project_slug": "my_app",
        "email": "admin@example.com",
    }
    assert set(COMPUTED).isdisjoint(answers)
    # The message after copy: where to go and what to run, in order.
    commands = [f"cd {tmp_path / 'my-app'}", "git init && git add . && git commit", "docker compose up"]
    positions = [steps.find(command) for command in commands]
    assert -1 not in positions and positions == sorted(positions), steps[-800:]


def test_a_refused_answer_says_why_on_one_line_and_asks_again(tmp_path):
    terminal = Terminal(tmp_path / "shop")
    terminal.ask("project_name")
    terminal.type("My <Shop>")
    terminal.refused("project_name", "Only letters, digits, spaces, .-_")
    # "Email" would shadow the standard library: the default slug steps aside.
    terminal.type("Email")
    terminal.ask("project_slug")
    terminal.shows("email_app")
    for slug, message in [
        ("email", "Taken by the standard library."),
        ("class", "That is a Python keyword."),
        ("psycopg", "Taken by a module the app uses."),
        ("Shop", "Start with a lower-case letter."),
    ]:
        terminal.type(slug)
        terminal.refused("project_slug", message)
    terminal.type("shop")
    for question in ("framework", "python_version", "postgres_version"):
        terminal.ask(question)
        terminal.type()
    terminal.ask("domain")
    # A dotless name used to crash copier while it built the email default.
    terminal.type("localhost")
    terminal.refused("domain", "Use a public name, like example.com.")
    terminal.type("shop.test")
    terminal.ask("email")
    terminal.shows("admin@shop.test")
    terminal.type()
    terminal.ask("license")
    terminal.type()
    terminal.ask("background_jobs")
    terminal.type()
    terminal.finish()
    answers = yaml.safe_load((tmp_path / "shop" / ".copier-answers.yml").read_text())
    assert (answers["project_name"], answers["project_slug"]) == ("Email", "shop")
    assert (answers["domain"], answers["email"]) == ("shop.test", "admin@shop.test")
    assert (tmp_path / "shop" / "shop" / "__init__.py").is_file()


# --- the rules, through copier's own Jinja environment -----------------------


@pytest.fixture(scope="module")
def jinja():
    # Copier's environment: sandboxed, with the Ansible filters (regex_search...);
    # strict, so that a misspelt name fails here instead of reading as empty.
    return SandboxedEnvironment(
        extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"], undefined=StrictUndefined
    )


def rendered(jinja, question: str, key: str, **answers) -> str:
    return jinja.from_string(QUESTIONS[question][key]).render(**COMPUTED, **answers).strip()


def test_validator_messages_fit_one_80_column_line():
    seen = 0
    for question, spec in QUESTIONS.items():
        # The text between Jinja tags: each branch's message.
        for message in re.findall(r"%\}([^{]+)\{%", spec.get("validator", "")):
            seen += 1
            assert "{{" not in message and len(error_line(question, message.strip())) <= COLUMNS, message
    assert seen >= 10


def test_help_fits_80_columns():
    for spec in QUESTIONS.values():
        lines = spec.get("help", "").splitlines()
        # copier puts "🎤 " (three columns) before the first line and two spaces after the last.
        assert all(3 + len(line) + 2 <= COLUMNS for line in lines), lines


# Distributions whose import name is not their own, normalised.
IMPORT_NAMES = {
    "python-dotenv": ["dotenv"],
    "django-environ": ["environ"],
    "python-json-logger": ["pythonjsonlogger"],
    "attrs": ["attr", "attrs"],
    "pyyaml": ["yaml"],
    "pytest": ["pytest", "py"],
    "atpublic": ["public"],
    "django-storages": ["storages"],
}


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> list[Path]:
    return [render(tmp_path_factory.mktemp(framework) / "p", framework=framework) for framework in FRAMEWORKS]


def test_slug_refuses_keywords_the_standard_library_and_what_the_project_imports(jinja, projects):
    def refusal(slug: str) -> str:
        return rendered(jinja, "project_slug", "validator", project_slug=slug)

    keywords = [name for name in keyword.kwlist if name.islower()]
    stdlib = [name for name in sys.stdlib_module_names if re.fullmatch(r"[a-z][a-z0-9_]*", name)]
    imported, own = set(), set()
    for project in projects:
        lock = (project / "uv.lock").read_text()
        for distribution in re.findall(r'^name = "([^"]+)"', lock, re.MULTILINE):
            imported.update(IMPORT_NAMES.get(distribution, [distribution.replace("-", "_")]))
        # The project's top-level packages and modules, its own package aside.
        own.update(path.stem for path in project.iterdir() if path.is_dir() or path.suffix == ".py")
    imported.discard("my_app")
    own = {name for name in own if re.fullmatch(r"[a-z][a-z0-9_]*", name)} - {"my_app"}
    assert {"flask", "django", "psycopg", "gunicorn"} <= imported and {"scripts", "tests"} <= own
    assert {name: refusal(name) for name in keywords} == dict.fromkeys(keywords, "That is a Python keyword.")
    assert {name: refusal(name) for name in stdlib} == dict.fromkeys(stdlib, "Taken by the standard library.")
    assert [name for name in sorted(imported | own) if not refusal(name)] == []
    assert [refusal(name) for name in ("my_app", "shop", "email_app", "app_123")] == ["", "", "", ""]


@pytest.mark.parametrize(
    ("name", "slug"),
    [("My App", "my_app"), ("Email", "email_app"), ("Class", "class_app"), ("Flask", "flask_app"),
     ("Docs", "docs_app"), ("123", "app_123"), ("2 Fast 2 Web", "app_2_fast_2_web"), ("A", "a"),
     ("Acme Shop-2", "acme_shop_2"), ("site.py", "site_py")],
)  # fmt: skip
def test_the_derived_slug_always_passes_its_validator(jinja, name, slug):
    assert rendered(jinja, "project_name", "validator", project_name=name) == ""
    derived = rendered(jinja, "project_slug", "default", project_name=name)
    assert derived == slug
    assert rendered(jinja, "project_slug", "validator", project_slug=derived) == ""


ACCEPTED = ["example.com", "a.io", "my-shop.co.uk", "xn--bcher-kva.example", "shop.test", "a1.b2.c3d"]
REFUSED = ["localhost", "intranet", "203.0.113.10", "Example.com", "a..com", "-a.com", "example.com/"]


def test_the_email_default_passes_for_every_accepted_domain(jinja):
    accepted = [d for d in ACCEPTED + REFUSED if not rendered(jinja, "domain", "validator", domain=d)]
    assert accepted == ACCEPTED
    for domain in accepted:
        email = rendered(jinja, "email", "default", domain=domain)
        assert rendered(jinja, "email", "validator", email=email) == "", email


LICENSES = {
    "none": None,
    "MIT": "MIT License",
    "Apache-2.0": "Apache License",
    "BSD-3-Clause": "BSD 3-Clause License",
    "GPL-3.0-or-later": "GNU GENERAL PUBLIC LICENSE",
}


def test_every_license_choice_is_tested():
    assert set(QUESTIONS["license"]["choices"].values()) == set(LICENSES)


@pytest.mark.parametrize("choice", LICENSES)
def test_license_writes_license_and_pyproject(tmp_path, choice):
    project = render(tmp_path / "p", project_name="Acme Shop", license=choice)
    declared = tomllib.loads((project / "pyproject.toml").read_text())["project"]["license"]
    # A valid SPDX expression (PEP 639), as the answer names it.
    assert canonicalize_license_expression(declared) == declared
    assert declared == ("LicenseRef-Proprietary" if choice == "none" else choice)
    readme = (project / "README.md").read_text()
    if LICENSES[choice] is None:
        assert not (project / "LICENSE").exists()
        assert "All rights reserved" in readme
        return
    text = (project / "LICENSE").read_text()
    assert text.strip().splitlines()[0].strip() == LICENSES[choice]
    assert f"{choice}: see [LICENSE](LICENSE)." in readme
    if choice in ("MIT", "BSD-3-Clause"):
        assert "Copyright (c) the Acme Shop authors" in text
