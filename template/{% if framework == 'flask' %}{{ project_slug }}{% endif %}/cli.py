"""`flask release`: the one-off step that runs before a new release serves traffic."""

import shutil
from pathlib import Path

import click
from flask import Flask, current_app
from flask_migrate import upgrade


@click.command("release")
@click.option(
    "--static-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/srv/static"),
    show_default=True,
    help="Directory nginx serves /static/ from.",
)
def release(static_dir: Path) -> None:
    """Apply database migrations, then publish static files for nginx.

    Safe to run again: migrations already applied are skipped, and static
    files are copied over the previous release's, never deleted, so pages
    still served by the old release keep their assets during a deploy.
    """
    upgrade()
    shutil.copytree(current_app.static_folder, static_dir, dirs_exist_ok=True)
    release_id = current_app.config["APP_RELEASE"]
    click.echo(f"release {release_id}: migrations applied, static files in {static_dir}")


def init_app(app: Flask) -> None:
    app.cli.add_command(release)
