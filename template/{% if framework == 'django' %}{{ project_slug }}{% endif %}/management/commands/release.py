"""`python manage.py release`: the one-off step that runs before a new release serves traffic."""

import shutil
from pathlib import Path

from django.conf import settings
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
            published = f"static files in {static_dir}"
        else:
            # The production image collects them at build time; the development
            # image does not, and there runserver serves static files itself.
            published = f"no collected static files in {collected}, none published"
            self.stderr.write(self.style.WARNING(published))
        self.stdout.write(f"release {settings.APP_RELEASE}: migrations applied, {published}")
