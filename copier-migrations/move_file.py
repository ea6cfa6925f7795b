"""Copier migration: carry the project's own edits along when the template renames a file.

Run by `copier update` after it has rendered the new template version (the
"after" stage), from the project's directory:

    _migrations:
      - version: "1.1.0"
        command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/copier-migrations/move_file.py",
                  "static/css/site.css", "static/css/app.css"]

Copier itself does not know about renames: it writes NEW from the new
template and deletes OLD, so edits made to OLD would be left behind in git
history. This script takes OLD as the project had it before the update (its
git HEAD: `copier update` needs a clean working tree) and merges those edits
into NEW, three ways, with the template's OLD at the previous version as the
base. When that base is not available (OLD was a .jinja template), the
project's copy wins over the template's and the script says so.

Idempotent: once the update is committed, HEAD has no OLD and the script does
nothing; a project that never changed OLD keeps the template's NEW.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LABELS = ["before updating", "last update", "after updating"]


def git_show(revision: str, path: str, cwd: Path | None = None) -> bytes | None:
    result = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=cwd, capture_output=True, check=False)
    return result.stdout if result.returncode == 0 else None


def merge(ours: bytes, base: bytes, theirs: bytes) -> tuple[bytes, bool]:
    """Three-way merge with git merge-file; returns the result and whether it conflicts."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, content in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp, name)
            path.write_bytes(content)
            paths.append(str(path))
        labels = [argument for label in LABELS for argument in ("-L", label)]
        result = subprocess.run(
            ["git", "merge-file", "-p", *labels, *paths], capture_output=True, check=False
        )
    if result.returncode < 0 or result.returncode > 127:
        raise SystemExit(f"move_file: git merge-file failed: {result.stderr.decode()}")
    return result.stdout, result.returncode > 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the file's path in the project before the rename")
    parser.add_argument("new", help="the file's path in the new template version")
    parser.add_argument(
        "--subdirectory",
        default="template",
        help="the template's _subdirectory, where OLD is found in the template repository",
    )
    args = parser.parse_args()

    ours = git_show("HEAD", args.old)
    if ours is None:
        print(f"move_file: {args.old} is not in the project's HEAD: nothing to move.")
        return 0
    new = Path(args.new)
    theirs = new.read_bytes() if new.exists() else None

    template = Path(__file__).resolve().parent.parent
    version_from = os.environ.get("VERSION_FROM", "")
    base = git_show(version_from, f"{args.subdirectory}/{args.old}", cwd=template) if version_from else None

    if theirs is None or ours in (theirs, base):
        # Nothing of the project's own to keep, or nothing of the template's to add.
        result, conflict = (ours if theirs is None else theirs), False
    elif base is not None:
        result, conflict = merge(ours, base, theirs)
    else:
        result, conflict = ours, False
        print(
            f"move_file: kept your {args.old} as {args.new}: the template's own changes to it"
            " were not merged; compare with the template's version.",
            file=sys.stderr,
        )

    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_bytes(result)
    Path(args.old).unlink(missing_ok=True)
    if conflict:
        print(f"move_file: {args.old} -> {args.new}: CONFLICT, resolve the markers in {args.new}")
    elif result != theirs:
        print(f"move_file: {args.old} -> {args.new}: your changes moved along")
    return 0


if __name__ == "__main__":
    sys.exit(main())
