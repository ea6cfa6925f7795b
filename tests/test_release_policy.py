"""Release policy (docs/releasing.md): CHANGELOG.md describes each release,
newest first, under a PEP 440 version that copier sorts the same way; each
release is the commit that gave it its heading; tags and migrations name
only releases the changelog describes.

The checks run on the versions CHANGELOG.md names, so they cannot pass on a
clone without tags: where a tag is missing, a throwaway clone gets it.
"""

from __future__ import annotations

import re
from datetime import date

import yaml
from packaging.version import InvalidVersion, Version

from conftest import DEFAULTS, ROOT
from updating import (
    RELEASE_HEADING,
    answers,
    changelog_releases,
    clone_with_release_tags,
    copier,
    git,
    release_commit,
    run,
)

# 0.1.0 is released: the changelog never names fewer.
MIN_RELEASES = 1


def is_version(text: str) -> bool:
    try:
        return str(Version(text)) == text
    except InvalidVersion:
        return False


def test_changelog_names_its_releases_newest_first():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = changelog_releases(changelog)
    assert len(releases) >= MIN_RELEASES, "CHANGELOG.md lost release headings (## VERSION (YYYY-MM-DD))"
    versions = [version for version, _ in releases]
    assert [v for v in versions if not is_version(v)] == [], "not canonical PEP 440 versions (no `v` prefix)"
    assert versions == sorted(set(versions), key=Version, reverse=True), "releases out of order, or repeated"
    dates = [date.fromisoformat(day) for _, day in releases]
    assert dates == sorted(dates, reverse=True), "release dates out of order"
    # Any other level-2 heading is the next release in the making, at the top.
    headings = re.findall(r"^## .*$", changelog, re.MULTILINE)
    others = [heading for heading in headings if not RELEASE_HEADING.fullmatch(heading)]
    assert others in ([], headings[:1]) and all(h.startswith("## Unreleased") for h in others), others


def test_each_release_says_what_to_do_by_hand_and_which_migrations_run():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    entries = re.split(r"^## ", changelog, flags=re.MULTILINE)[1:]
    released = [entry for entry in entries if RELEASE_HEADING.match("## " + entry)]
    assert len(released) >= MIN_RELEASES
    for entry in released:
        version = entry.split()[0]
        assert re.search(r"^\**By hand\**:", entry, re.MULTILINE), f"{version}: no 'By hand:' paragraph"
        assert re.search(r"^\**Migrations\**:", entry, re.MULTILINE), f"{version}: no 'Migrations:' paragraph"


def test_each_release_is_a_commit_and_every_tag_is_a_release():
    """The commit that added a release's heading exists; a tag that exists
    is a release the changelog describes, and contains that commit."""
    versions = [version for version, _ in changelog_releases()]
    assert len(versions) >= MIN_RELEASES
    tags = git(ROOT, "tag", "--list").split()
    assert [tag for tag in tags if not is_version(tag)] == [], "copier ignores tags that are not PEP 440"
    assert sorted(set(tags) - set(versions)) == [], "tags that CHANGELOG.md does not describe"
    for version in versions:
        commit = release_commit(ROOT, version)
        if version in tags:
            contains = run("git", "merge-base", "--is-ancestor", commit, version, cwd=ROOT, check=False)
            assert contains.returncode == 0, f"tag {version} does not contain its CHANGELOG entry ({commit})"


def test_copier_takes_the_newest_changelog_release_as_the_latest(tmp_path):
    """With every release tagged, `copier copy` without --vcs-ref renders the
    newest one the changelog names: copier's PEP 440 order is the changelog's."""
    versions = [version for version, _ in changelog_releases()]
    assert len(versions) >= MIN_RELEASES
    template = clone_with_release_tags(tmp_path / "template", *versions)
    data = [a for key, value in DEFAULTS.items() for a in ("--data", f"{key}={value}")]
    copier("copy", "--quiet", "--defaults", *data, template, tmp_path / "project", cwd=tmp_path)
    assert answers(tmp_path / "project")["_commit"] == versions[0]


def test_copier_yml_migrations_are_honest():
    """Each migration of the real template names a version that the changelog
    describes (released, or the one under "Unreleased"), and runs a script
    that exists."""
    config = yaml.safe_load((ROOT / "copier.yml").read_text())
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert isinstance(config["_migrations"], list), "copier.yml: _migrations must be a list ([] for none)"
    for migration in config["_migrations"]:
        assert isinstance(migration, dict) and is_version(str(migration.get("version"))), migration
        assert re.search(rf"^## .*\b{re.escape(migration['version'])}\b", changelog, re.MULTILINE), (
            f"CHANGELOG.md has no heading for {migration['version']}"
        )
        command = migration["command"]
        scripts = re.findall(
            r"copier-migrations/[\w.]+", " ".join(command) if isinstance(command, list) else command
        )
        assert scripts and all((ROOT / script).is_file() for script in scripts), migration
