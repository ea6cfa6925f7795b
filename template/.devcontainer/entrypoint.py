"""The development image's entrypoint: run the command as the owner of /app.

compose.override.yaml bind-mounts your working tree over /app. Running as its
owner lets `makemigrations` or `flask db migrate` write files you own on the
host, whatever your UID: on Linux that is your own user; with rootless Docker,
or Docker Desktop, the mount looks owned by root, which maps back to you.

With DEBUGPY=1 (in .env), Python commands run under debugpy, which listens on
port 5678 for an editor to attach; breakpoint() then stops in the editor
instead of at a pdb prompt.
"""

import os
import sys

CODE = "/app"
# The volumes the release step (the migrate service) publishes static files
# to, and uploads go to.
VOLUMES = ("/srv/static", "/srv/media")
DEBUGPY = ["-m", "debugpy", "--listen", "0.0.0.0:5678"]


def main() -> None:
    command = sys.argv[1:]
    if not command:
        sys.exit("usage: dev-entrypoint.py COMMAND [ARG...]")
    owner = os.stat(CODE)
    if os.getuid() == 0 and owner.st_uid != 0:
        # Needs CHOWN, SETGID and SETUID (compose.override.yaml adds them);
        # switching away from root drops every capability, those included.
        for volume in VOLUMES:
            if os.path.ismount(volume):
                os.chown(volume, owner.st_uid, owner.st_gid)
        os.setgroups([])
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)
    if os.environ.get("DEBUGPY") == "1" and command[0] == "python":
        command[1:1] = DEBUGPY
    try:
        os.execvp(command[0], command)  # noqa: S606 (the container's command, as given)
    except FileNotFoundError:
        sys.exit(f"dev-entrypoint: {command[0]}: command not found in the development image")


if __name__ == "__main__":
    main()
