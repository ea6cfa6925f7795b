"""The throwaway VPS and the rendered project that tests/test_deploy.py,
test_deploy_images.py, test_deploy_interrupted.py and test_deploy_with_jobs.py
share: one scenario in steps, across those files (booting and provisioning a
VPS takes minutes). conftest.py makes
these session fixtures; the VPS stops when the session ends."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import prepare_images, render
from vpshost import Vps, build_from, build_release, run, vps_image

# The scenario's data: the rows the first deploy writes, as one digest, and
# the home page's visit counter.
TABLE_DIGEST = (
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || payload, ',' ORDER BY id)) FROM deploy_rows;"
)
COUNTER = "SELECT value FROM counter WHERE name = 'home';"


def start_vps(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Vps]:
    server = Vps(tmp_path_factory.mktemp("vps"), vps_image())
    failed_before = request.session.testsfailed
    try:
        server.start()
        yield server
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n--- journal of the VPS ---\n{server.journal()}")
        server.stop()


def deploy_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A rendered project in a git repository, with releases built as images:
    relA; relC, whose stylesheet has one more rule; and `broken`, which never
    turns healthy and logs every request it gets. The second release is the
    one `scripts/deploy HOST` builds itself, named after the commit."""
    suffix = uuid.uuid4().hex[:6]
    root = render(tmp_path_factory.mktemp("deploy") / "project", project_name=f"Deploy Check {suffix}")
    slug = f"deploy_check_{suffix}"
    prepare_images(root)
    git = ("git", "-C", str(root), "-c", "user.name=Test", "-c", "user.email=test@example.com")
    run(*git, "init", "--quiet")
    run(*git, "add", "--all")
    run(*git, "commit", "--quiet", "--message", "The generated project")
    rel_c = tmp_path_factory.mktemp("relC") / "project"
    shutil.copytree(root, rel_c, ignore=shutil.ignore_patterns(".git"))
    with (rel_c / "static" / "css" / "site.css").open("a") as site_css:
        site_css.write("\nh1 {\n  letter-spacing: 0.01em;\n}\n")
    for release, context in (("relA", root), ("relC", rel_c)):
        build_release(context, f"{slug}:{release}", release)
    build_from(
        tmp_path_factory.mktemp("broken"),
        f"{slug}:broken",
        f"FROM {slug}:relA\n"
        "ENV APP_RELEASE=broken\n"
        # Never healthy, but "starting" for a minute: longer than deploy's
        # --health-timeout and than two of nginx's 5 s re-resolves. The
        # check sends no request, so that the log holds only others'.
        "HEALTHCHECK --interval=2s --timeout=2s --start-period=60s --retries=1 "
        'CMD ["python", "-c", "raise SystemExit(1)"]\n'
        # Serves anything, and logs each request to stderr.
        'CMD ["python", "-m", "http.server", "8000"]\n',
    )
    yield root, slug
    images = run("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    ours = [image for image in images if slug in image]
    if ours:
        run("docker", "image", "rm", "--force", *ours, check=False)
