"""A deployed project's server side in a temporary directory, with a fake
`docker` and `curl` first on PATH: the harness of the server units' tests.

template/scripts/server.sh and its modules are plain bash, copied (not
rendered) into a throwaway /srv/<project>/scripts/. The fake `docker`
records each call's argv and answers from a list of rules: (regex on the
joined argv, stdout, exit status), first match wins, anything else prints
nothing and succeeds. Tests run server.sh's commands (`Server.run`), or
source it (sourcing runs nothing) and call one function (`Server.call`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import ROOT

SCRIPTS = ROOT / "template" / "scripts"
PROJECT = "shop"

# Bash, not Python: it runs dozens of times per test. The log holds one call
# per line, its arguments separated by the unit separator (\x1f); the rules
# file one rule per line: regex, exit status, stdout (printf %b escapes).
FAKE_DOCKER = r"""#!/usr/bin/env bash
argv="$*"
(IFS=$'\x1f' && printf '%s\n' "$*") >>"$FAKE_LOG"
while IFS=$'\t' read -r pattern status stdout; do
    if [[ $argv =~ $pattern ]]; then
        printf '%b' "$stdout"
        exit "$status"
    fi
done <"$FAKE_RULES"
"""

# /healthz through nginx answers with the release that .env names.
FAKE_CURL = """#!/bin/sh
printf '{"release": "%s", "status": "ok"}' "$(sed -n 's/^APP_RELEASE=//p' .env)"
"""


# A switch from A, served by old1, to B: compose creates new1 beside it.
SWITCH = [
    (r"^image inspect", "[]", 0),
    (r"service=app .*status=running", "old1\n", 0),
    (r"service=app .*status=created", "new1\n", 0),
    (r"^wait ", "0\n", 0),
]


class Server:
    """A deployed project's directory with server.sh, and fakes on PATH."""

    def __init__(self, root: Path):
        self.app_dir = root / "srv" / PROJECT
        shutil.copytree(SCRIPTS / "server", self.app_dir / "scripts" / "server")
        shutil.copy2(SCRIPTS / "server.sh", self.app_dir / "scripts" / "server.sh")
        (self.app_dir / ".env").write_text("SECRET_KEY=x\nHTTP_PORT=80\n")
        # What a deploy ships (the fake docker never reads it).
        (self.app_dir / "compose.yaml").write_text("services: {}\n")
        # nginx re-resolves at once: the switch waits only its 2 s margin.
        templates = self.app_dir / "nginx" / "templates"
        templates.mkdir(parents=True)
        (templates / "default.conf.template").write_text("resolver 127.0.0.11 valid=0s ipv6=off;\n")
        self.bin = root / "bin"
        self.bin.mkdir()
        for name, text in (("docker", FAKE_DOCKER), ("curl", FAKE_CURL)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.log = root / "docker.log"
        self.rules_file = root / "rules.json"
        self.rules: list[tuple[str, str, int]] = []

    def env(self) -> dict[str, str]:
        self.rules_file.write_text(
            "".join(
                f"{pattern}\t{status}\t{stdout.encode('unicode_escape').decode()}\n"
                for pattern, stdout, status in self.rules
            )
        )
        self.log.write_text("")
        return {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_LOG": str(self.log),
            "FAKE_RULES": str(self.rules_file),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(self.app_dir / "scripts" / "server.sh"), *args],
            env=self.env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def call(self, script: str) -> subprocess.CompletedProcess:
        """Source server.sh, enter the project, then run bash SCRIPT."""
        prelude = f". {self.app_dir / 'scripts' / 'server.sh'}; COMMAND=test; project_dir; "
        return subprocess.run(
            ["bash", "-c", prelude + script], env=self.env(), capture_output=True, text=True, timeout=60
        )

    def calls(self) -> list[list[str]]:
        return [line.split("\x1f") for line in self.log.read_text().splitlines()]

    def release(self) -> str:
        lines = (self.app_dir / ".env").read_text().splitlines()
        return [line.split("=", 1)[1] for line in lines if line.startswith("APP_RELEASE=")][-1]

    def releases_log(self, *entries: tuple[str, str]) -> None:
        (self.app_dir / "releases.log").write_text(
            "".join(
                f"2026-01-0{i + 1}T00:00:00Z\t{action}\t{release}\tuploaded\n"
                for i, (action, release) in enumerate(entries)
            )
        )
        with (self.app_dir / ".env").open("a") as env:
            env.write(f"APP_RELEASE={entries[-1][1]}\n")


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1, result.stderr
    return lines[0]
