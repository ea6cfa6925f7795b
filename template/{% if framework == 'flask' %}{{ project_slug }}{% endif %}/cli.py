"""`flask release`: the one-off step that runs before a new release serves traffic."""

import shutil
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from flask_migrate import upgrade

from . import hashed_name


@click.command("release")
@click.option(
    "--static-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/srv/static"),
    show_default=True,
    help="Directory nginx serves /static/ from.",
)
@with_appcontext
def release(static_dir: Path) -> None:
    """Apply database migrations, then publish static files for nginx.

    Safe to run again: migrations already applied are skipped. Each static
    file is published under its own name and under its content-hashed name
    (the one pages link to); nothing is ever deleted, so pages of earlier
    releases (during a deploy, after a rollback) keep their own assets.
    """
    upgrade()
    source = Path(current_app.static_folder)
    shutil.copytree(source, static_dir, dirs_exist_ok=True)
    for path in source.rglob("*"):
        if path.is_file():
            filename = path.relative_to(source).as_posix()
            shutil.copyfile(path, static_dir / hashed_name(filename))
    release_id = current_app.config["APP_RELEASE"]
    click.echo(f"release {release_id}: migrations applied, static files in {static_dir}")


def init_app(app: Flask) -> None:
    app.cli.add_command(release)
