"""Uploaded files (issue 13, part 3): the app writes them through its
framework's storage (Django's default storage, Flask's storage.py) to the
`media` volume, nginx serves them under /media/ read-only with headers that
keep browsers from running them, both refuse a body over MAX_UPLOAD_SIZE,
and server.sh's backup and restore carry the volume beside the dump. With
AWS_STORAGE_BUCKET_NAME set, files go to an S3-compatible bucket instead.

Render tests check the compose wiring without an engine, and the laptop's
scripts/backup and scripts/restore carrying the archive over a fake ssh
(tests/fakelaptop.py). The Docker tests
boot one stack per framework (with MAX_UPLOAD_SIZE=1m) and, in order: upload
through nginx and fetch back byte-identical, with the safe headers; refuse a
body over the limit with a 413 page; keep the files across new app and nginx
containers; back up with the real server.sh (dump and media archive) and
restore; then switch the same stack to moto's S3 server (PyPI's moto[server],
in a container on the stack's network) and upload to the bucket.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import tarfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import FRAMEWORKS, Stack, booted, render

LIMIT = 1024 * 1024
BUCKET = "uploads-test"
# moto's server in a throwaway image; the project's own Python base image.
MOTO_DOCKERFILE = """\
FROM python:3.14-slim
RUN pip install --no-cache-dir "moto[server]>=5"
ENTRYPOINT ["moto_server", "--host", "0.0.0.0", "--port", "5000"]
"""
MOTO_IMAGE = "template-tests-moto:5"


def compose_config(project: Path, **env: str) -> dict:
    result = subprocess.run(
        ["docker", "compose", "-f", "compose.yaml", "config", "--format", "json"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- Render level: no engine ---


@pytest.fixture(scope="module", params=FRAMEWORKS)
def rendered(request, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp(f"render-{request.param}") / "project", framework=request.param)


def test_only_the_app_writes_the_media_volume_and_nginx_reads_it(rendered):
    config = compose_config(rendered)
    assert "media" in config["volumes"]
    media = [
        (name, volume["target"], volume.get("read_only", False))
        for name, service in config["services"].items()
        for volume in service.get("volumes", [])
        if volume["source"] == "media"
    ]
    assert sorted(media) == [("app", "/srv/media", False), ("nginx", "/usr/share/nginx/media", True)]
    assert config["services"]["app"]["environment"]["MEDIA_ROOT"] == "/srv/media"


@pytest.mark.parametrize(("env", "expected"), [({}, "10m"), ({"MAX_UPLOAD_SIZE": "3m"}, "3m")])
def test_one_size_limit_for_nginx_and_the_app(rendered, env, expected):
    services = compose_config(rendered, **env)["services"]
    assert services["app"]["environment"]["MAX_UPLOAD_SIZE"] == expected
    assert services["nginx"]["environment"]["MAX_UPLOAD_SIZE"] == expected
    template = (rendered / "nginx" / "templates" / "default.conf.template").read_text()
    assert re.findall(r"^\s*client_max_body_size .*;$", template, re.M) == [
        "    client_max_body_size ${MAX_UPLOAD_SIZE};"
    ]


def test_s3_settings_reach_the_app_under_their_standard_names(rendered):
    names = ["AWS_STORAGE_BUCKET_NAME", "AWS_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    env = {name: f"value-of-{name}" for name in names}
    app = compose_config(rendered, **env)["services"]["app"]["environment"]
    assert {name: app[name] for name in names} == env
    example = (rendered / ".env.example").read_text()
    assert all(re.search(rf"^# {name}=", example, re.M) for name in [*names, "MAX_UPLOAD_SIZE"]), example


# The laptop's scripts/backup and scripts/restore, with tests/fakelaptop.py's fake ssh.


@pytest.fixture
def fake(tmp_path_factory, tmp_path):
    from fakelaptop import Fake

    project = render(tmp_path_factory.mktemp("cli") / "project")
    return Fake(project, tmp_path)


def test_backup_downloads_the_uploaded_files_beside_the_dump(fake, tmp_path):
    result = fake.run("backup", "host", "--to", str(tmp_path / "copies"))
    assert result.returncode == 0, result.stderr
    assert "test -f /srv/my_app/backups/my_app-1.media.tar " in fake.lines("commands")
    assert "cat /srv/my_app/backups/my_app-1.media.tar " in fake.lines("commands")
    assert sorted(path.name for path in (tmp_path / "copies").iterdir()) == [
        "my_app-1.dump",
        "my_app-1.media.tar",
    ]


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_restore_uploads_the_archive_beside_a_local_dump(fake, tmp_path):
    (tmp_path / "my_app-1.dump").write_bytes(b"PGDMP rows")
    archive = tar_of({"./uploads/a.png": b"\x89PNG" * 300})
    (tmp_path / "my_app-1.media.tar").write_bytes(archive)
    result = fake.run("restore", "--yes", "host", str(tmp_path / "my_app-1.dump"))
    assert result.returncode == 0, result.stderr
    assert "with the uploaded files in my_app-1.media.tar" in result.stdout
    assert (fake.log / "stdin").read_bytes() == b"PGDMP rows" + archive
    uploads = [line for line in fake.lines("commands") if line.startswith("sh -c umask")]
    assert [line.split()[-1] for line in uploads] == [
        "/srv/my_app/backups/uploaded/my_app-1.dump",
        "/srv/my_app/backups/uploaded/my_app-1.media.tar",
    ], uploads
    assert fake.server_commands[-1].endswith("/scripts/server.sh restore uploaded/my_app-1.dump ")


def test_restore_refuses_a_truncated_archive_before_any_ssh(fake, tmp_path):
    (tmp_path / "my_app-1.dump").write_bytes(b"PGDMP rows")
    archive = tar_of({"./uploads/a.bin": b"x" * 5000})
    (tmp_path / "my_app-1.media.tar").write_bytes(archive[:2000])
    result = fake.run("restore", "--yes", "host", str(tmp_path / "my_app-1.dump"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"restore: {tmp_path}/my_app-1.media.tar is not a whole tar archive (truncated or another format):"
        " nothing changed"
    )
    assert fake.lines("argv") == []


# --- On a running stack ---


@pytest.fixture(scope="module", params=FRAMEWORKS)
def stack(request, tmp_path_factory):
    project = render(
        tmp_path_factory.mktemp(request.param) / "project",
        framework=request.param,
        project_name="Uploads Test",
    )
    with (project / ".env").open("a") as env:
        env.write("MAX_UPLOAD_SIZE=1m\n")
    with booted(project, request) as stack:
        yield stack


class Site:
    """A browser on the stack's site: its cookies, and Django's CSRF token."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.session = requests.Session()

    def upload(self, filename: str, content: bytes) -> requests.Response:
        home = self.session.get(self.stack.url + "/", timeout=10)
        assert home.status_code == 200, home.text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', home.text)
        data = {"csrfmiddlewaretoken": token.group(1)} if token else {}
        return self.session.post(
            self.stack.url + "/", data=data, files={"file": (filename, content)}, timeout=30
        )

    def stored(self, filename: str, content: bytes) -> str:
        """Upload through nginx; the link the page shows to the stored file."""
        response = self.upload(filename, content)
        assert response.status_code == 200 and response.history, response.text
        link = re.search(r'<a id="uploaded" href="([^"]+)">', response.text)
        assert link, response.text
        return link.group(1).replace("&amp;", "&")


def fetch(stack: Stack, link: str) -> requests.Response:
    return requests.get(stack.url + link, timeout=10)


def in_volume(stack: Stack, *command: str) -> str:
    return stack.compose("exec", "-T", "app", *command).stdout


@pytest.mark.docker
def test_an_upload_comes_back_byte_identical_and_never_runs(stack: Stack):
    site = Site(stack)
    image = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(200_000)
    link = site.stored("photo.png", image)
    assert re.fullmatch(r"/media/uploads/[\w.-]+\.png", link), link
    served = fetch(stack, link)
    assert (served.status_code, served.content) == (200, image)
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Disposition" not in served.headers, "images show inline"
    assert "sandbox" in served.headers["Content-Security-Policy"]
    # What a browser would run, and SVG, which can carry scripts: downloads.
    for name in ("page.html", "drawing.svg"):
        content = b"<script>alert(document.cookie)</script>"
        served = fetch(stack, site.stored(name, content))
        assert served.content == content
        assert served.headers["Content-Disposition"] == "attachment", name
        assert "default-src 'none'" in served.headers["Content-Security-Policy"]
    # Files are the app user's, on a volume Docker created for this stack.
    assert in_volume(stack, "stat", "-c", "%u %a", "/srv/media").split() == ["10001", "755"]
    assert in_volume(stack, "stat", "-c", "%u %a", "/srv/media" + link.removeprefix("/media")).split() == [
        "10001",
        "644",
    ]


@pytest.mark.docker
def test_names_are_the_apps_own(stack: Stack):
    site = Site(stack)
    first = site.stored("../../etc/same name.txt", b"first")
    second = site.stored("../../etc/same name.txt", b"second")
    assert first != second, "an upload never replaces another"
    for link, content in ((first, b"first"), (second, b"second")):
        assert re.fullmatch(r"/media/uploads/[\w.-]+", link) and ".." not in link, link
        assert fetch(stack, link).content == content
    # nginx only reads the volume.
    assert requests.put(stack.url + first, data=b"x", timeout=10).status_code == 403
    assert fetch(stack, "/media/uploads/").status_code in (403, 404)


@pytest.mark.docker
def test_a_body_over_the_limit_gets_a_413_page_and_stores_nothing(stack: Stack):
    before = in_volume(stack, "find", "/srv/media", "-type", "f")
    response = Site(stack).upload("big.bin", b"x" * (LIMIT + 100_000))
    assert response.status_code == 413
    assert "larger than this site accepts" in response.text
    assert re.search(r'id="request-id">[0-9a-f]{32}<', response.text)
    assert in_volume(stack, "find", "/srv/media", "-type", "f") == before
    # Just under the limit passes, form and all.
    assert Site(stack).upload("fits.bin", b"x" * (LIMIT - 10_000)).status_code == 200


@pytest.mark.docker
def test_uploads_outlive_the_containers(stack: Stack):
    content = secrets.token_bytes(5000)
    link = Site(stack).stored("kept.bin", content)
    stack.compose("up", "-d", "--wait", "--force-recreate", "--no-deps", "app", "nginx")
    assert stack.wait_for(link, 200).content == content


def server_sh(stack: Stack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The project's real server.sh, on this stack: a link named like the
    stack's compose project stands for /srv/<project>."""
    link = tmp_path / "srv" / stack.name
    if not link.exists():
        link.parent.mkdir(parents=True)
        link.symlink_to(stack.project)
    env = {**stack.env, "DEPLOY_APP_DIR": str(link), "COMPOSE_FILE": "compose.yaml"}
    return subprocess.run(
        ["bash", str(stack.project / "scripts" / "server.sh"), *args],
        cwd=stack.project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.docker
def test_a_backup_carries_the_uploads_and_a_restore_puts_them_back(stack: Stack, tmp_path):
    site = Site(stack)
    content = secrets.token_bytes(30_000)
    link = site.stored("before-backup.bin", content)
    result = server_sh(stack, tmp_path, "backup")
    assert result.returncode == 0, result.stdout + result.stderr
    dump = Path(result.stdout.splitlines()[-1])
    media = dump.with_name(dump.name.removesuffix(".dump") + ".media.tar")
    assert dump.read_bytes().startswith(b"PGDMP")
    with tarfile.open(media) as archive:
        member = archive.extractfile("./" + link.removeprefix("/media/"))
        assert member.read() == content

    later = site.stored("after-backup.bin", b"later")
    in_volume(stack, "rm", "/srv/media" + link.removeprefix("/media"))
    assert fetch(stack, link).status_code == 404
    result = server_sh(stack, tmp_path, "restore", dump.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"replacing the uploaded files with {media.name}" in result.stdout
    assert fetch(stack, link).content == content
    assert fetch(stack, later).status_code == 404, "the volume holds the backup's files, no others"
    # The safety backup taken first has the later file.
    [safety] = dump.parent.glob("*-pre-restore.media.tar")
    with tarfile.open(safety) as archive:
        assert "./" + later.removeprefix("/media/") in archive.getnames()


@pytest.fixture(scope="module")
def moto(stack: Stack, tmp_path_factory):
    """moto's S3 server, as `s3` on the stack's web network, and published."""
    context = tmp_path_factory.mktemp("moto")
    (context / "Dockerfile").write_text(MOTO_DOCKERFILE)
    subprocess.run(["docker", "build", "-q", "-t", MOTO_IMAGE, str(context)], check=True, capture_output=True)
    name = f"{stack.name}-s3"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", f"{stack.name}_web", "--network-alias", "s3"]
        + ["-p", "127.0.0.1::5000", MOTO_IMAGE],
        check=True,
        capture_output=True,
    )
    try:
        port = (
            subprocess.run(["docker", "port", name, "5000/tcp"], check=True, capture_output=True, text=True)
            .stdout.split(":")[-1]
            .strip()
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.put(f"{endpoint}/{BUCKET}", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "moto's server never answered"
            time.sleep(0.5)
        yield endpoint
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.docker
def test_with_a_bucket_uploads_go_to_s3(stack: Stack, moto: str):
    stack.env.update(
        AWS_STORAGE_BUCKET_NAME=BUCKET,
        AWS_S3_ENDPOINT_URL="http://s3:5000",
        AWS_S3_REGION_NAME="us-east-1",
        AWS_S3_ADDRESSING_STYLE="path",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
    )
    stack.compose("up", "-d", "--wait", "--no-deps", "app")
    # nginx holds the replaced container's address until it resolves the name
    # again (at most 5 s): until then it answers 502.
    stack.wait_for("/readyz", 200, timeout=30)
    before = in_volume(stack, "find", "/srv/media", "-type", "f")
    content = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(50_000)
    link = Site(stack).stored("to-the-bucket.png", content)
    url = urlsplit(link)
    assert (url.scheme, url.netloc) == ("http", "s3:5000"), link
    assert url.path.startswith(f"/{BUCKET}/uploads/"), link
    assert "X-Amz-Signature=" in url.query, "the bucket stays private: links are signed"
    # The link as a browser would follow it, to the published port of the same server.
    served = requests.get(f"{moto}{url.path}?{url.query}", headers={"Host": "s3:5000"}, timeout=10)
    assert (served.status_code, served.content) == (200, content)
    assert in_volume(stack, "find", "/srv/media", "-type", "f") == before, "nothing on the volume"
    listing = requests.get(f"{moto}/{BUCKET}", timeout=10).text
    assert re.search(rf"<Key>{re.escape(url.path.removeprefix(f'/{BUCKET}/'))}</Key>", listing), listing
