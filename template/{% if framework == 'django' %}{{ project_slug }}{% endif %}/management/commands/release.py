"""`python manage.py release`: the one-off step that runs before a new release serves traffic."""

import shutil
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import BaseCommand, call_command


class Command(BaseCommand):
    help = (
        "Apply database migrations, then publish the image's collected static files for nginx. "
        "Safe to run again: applied migrations are skipped, and static files are copied over "
        "the previous release's, never deleted, so that pages still served by the old release "
        "keep their assets during a deploy."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--static-dir",
            type=Path,
            default=Path("/srv/static"),
            help="Directory nginx serves /static/ from (default: %(default)s).",
        )

    def handle(self, *args, static_dir: Path, verbosity: int, **options):
        call_command("migrate", interactive=False, verbosity=verbosity)

        collected = Path(settings.STATIC_ROOT)
        if (collected / "staticfiles.json").is_file():
            shutil.copytree(collected, static_dir, dirs_exist_ok=True)
            published = "collected static files"
        else:
            # The development image collects nothing at build time, and its
            # pages (DEBUG on) link to the files' own names: publish those.
            published = f"static files as found in the code (nothing collected in {collected})"
            self.publish_sources(static_dir)
        self.stdout.write(
            f"release {settings.APP_RELEASE}: migrations applied, {published} in {static_dir}"
        )

    def publish_sources(self, static_dir: Path) -> None:
        """Copy each static file the finders see, the first one found for each
        name winning, as collectstatic would, but under its unhashed name."""
        ignore = apps.get_app_config("staticfiles").ignore_patterns
        published = set()
        for finder in finders.get_finders():
            for path, storage in finder.list(ignore):
                name = str(Path(getattr(storage, "prefix", None) or "", path))
                if name not in published:
                    published.add(name)
                    (static_dir / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(storage.path(path), static_dir / name)
