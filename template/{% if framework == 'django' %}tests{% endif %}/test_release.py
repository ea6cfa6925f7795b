import json

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_release_publishes_static_files_and_keeps_older_ones(collected_static, tmp_path):
    older = tmp_path / "css" / "site.0123456789ab.css"
    older.parent.mkdir()
    older.write_text("body {}\n")

    call_command("release", static_dir=tmp_path)
    # A second run, as on every deploy, changes nothing and fails on nothing.
    call_command("release", static_dir=tmp_path)

    assert older.read_text() == "body {}\n"
    paths = json.loads((collected_static / "staticfiles.json").read_text())["paths"]
    for name in ("css/site.css", "admin/css/base.css"):
        hashed = paths[name]
        assert (tmp_path / hashed).read_bytes() == (collected_static / hashed).read_bytes()


@pytest.mark.django_db
def test_without_collected_files_release_publishes_the_sources(settings, tmp_path):
    # As in the development image, where pages link to the unhashed names.
    settings.STATIC_ROOT = tmp_path / "nothing-collected"
    call_command("release", static_dir=tmp_path / "static")
    source = settings.BASE_DIR / "static" / "css" / "site.css"
    assert (tmp_path / "static" / "css" / "site.css").read_bytes() == source.read_bytes()
    assert (tmp_path / "static" / "admin" / "css" / "base.css").is_file()


@pytest.mark.django_db
def test_models_and_migrations_agree():
    call_command("makemigrations", check=True, dry_run=True)
