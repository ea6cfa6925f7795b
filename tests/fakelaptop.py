"""A fake laptop-side `ssh` and `docker` for the deploy toolkit's scripts
(tests/test_deploy_cli.py, test_supply_chain.py): first on PATH, they record
what the rendered scripts ask and answer like a provisioned server, so that
a test sees exactly what would have gone over SSH, without an engine or a
server.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Where the rendered project (my_app) lives on the server.
APP_DIR = "/srv/my_app"

# Records each call's argv (one line) and its last argument, the remote
# command (one line); like the real ssh, reads its standard input unless
# given -n (or -N, -O, -G), keeping what it read; saves what `tar -xf` would
# unpack; answers the few commands whose output the scripts read.
FAKE_SSH = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$FAKE_LOG/argv"
command=${*: -1}
printf '%s\n' "$command" >>"$FAKE_LOG/commands"
case " $* " in
    *" -G "*) [ -z "${FAKE_SSH_USER:-}" ] || echo "user $FAKE_SSH_USER" ;;
esac
case " $* " in
    *" -N "*)
        if [ -n "${FAKE_SSH_DENY:-}" ]; then
            echo "${*: -1}: Permission denied (publickey,password)." >&2
            exit 255
        fi
        ;;
esac
case " $* " in
    *" -O check "*) [ ! -e "$FAKE_LOG/interrupted" ] || exit 255 ;;
    # The port the server forwards to the laptop's registry (ship_layers).
    *" -O forward "*) [ -z "${FAKE_SSH_NO_FORWARD:-}" ] || exit 255 && echo 41000 ;;
esac
if [ -n "${FAKE_SSH_STREAM_INT:-}" ] && [[ $command == "bash -c "* ]]; then
    # The stream's ssh as a Ctrl-C finds it: it exits 255 on SIGINT, and
    # the terminal's SIGINT has reached the shared connection too.
    trap 'touch "$FAKE_LOG/interrupted"; exit 255' INT
    touch "$FAKE_LOG/streaming"
    sleep 20 </dev/null >/dev/null 2>&1 &
    wait $!
fi
case " $* " in
    *" -n "* | *" -N "* | *" -O "* | *" -G "*) ;;
    *) cat >>"$FAKE_LOG/stdin" ;;
esac
case $command in
    *"tar -xf"*) mv "$FAKE_LOG/stdin" "$FAKE_LOG/shipped.tar" ;;
    "id -u ") echo 0 ;;
    "uname -m ") echo "${FAKE_UNAME:-x86_64}" ;;
    "mktemp -d ") echo /tmp/stage ;;
    # A swarm's manager when FAKE_SWARM_NODES lists its other nodes.
    *"DEPLOY_MODE=swarm"*) [ -n "${FAKE_SWARM_NODES:-}" ] ;;
    *"docker node inspect"*) printf '%s\n' "$FAKE_SWARM_NODES" ;;
    # The server has every image (not the app's with FAKE_SERVER_LACKS);
    # the swarm's other nodes have none.
    *"docker image inspect"*)
        case ${*: -2:1} in *@10.*) exit 1 ;; esac
        [[ -z ${FAKE_SERVER_LACKS:-} || $command != *" my_app:"* ]] || exit 1
        echo sha256:local
        ;;
    *"server.sh backup "*) printf -- '--> dumped\n/srv/my_app/backups/my_app-1.dump\n' ;;
    "cat /srv/my_app/backups/my_app-1.dump ") echo "the dump" ;;
esac
"""

# The laptop's docker: every image is there, with the id the server has too;
# a registry container starts (ship_layers) unless FAKE_NO_REGISTRY is set.
FAKE_DOCKER = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$FAKE_LOG/docker"
case $* in
    "image inspect --format {{.Id}} "*) echo sha256:local ;;
    "image inspect --format {{.Os}}/{{.Architecture}} "*) echo "${FAKE_PLATFORM:-linux/amd64}" ;;
    "run --detach --rm --name my_app-deploy-layers-"*" --publish 127.0.0.1::5000 "*)
        [ -z "${FAKE_NO_REGISTRY:-}" ] || { echo "port is already allocated" >&2 && exit 125; }
        echo registry-1
        ;;
    "port registry-1 5000/tcp") echo 127.0.0.1:40000 ;;
esac
"""


class Fake:
    """The fake ssh and docker of one test, and what they recorded."""

    def __init__(self, project: Path, directory: Path):
        self.project = project
        self.log = directory / "log"
        self.log.mkdir()
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        for name, text in (("ssh", FAKE_SSH), ("docker", FAKE_DOCKER)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_LOG": str(self.log),
        }
        for name in ("DEPLOY_TRACE", "DEPLOY_USER", "DEPLOY_SSH_CONFIG"):
            self.env.pop(name, None)

    def run(self, script: str, *args: str, input: str = "", **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.project / "scripts" / script), *args],
            cwd=self.project,
            env={**self.env, **env},
            input=input,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def lines(self, name: str) -> list[str]:
        path = self.log / name
        return path.read_text().splitlines() if path.exists() else []

    @property
    def server_commands(self) -> list[str]:
        """The scripts/server.sh commands, as the server's shell gets them
        (a deploy's is a `bash -c` that runs the shipped server.sh)."""
        return [
            command
            for command in self.lines("commands")
            if "/scripts/server.sh " in command or "bash -c " in command
        ]
