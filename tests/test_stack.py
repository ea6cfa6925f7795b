"""Stack tests: render a project, boot its production stack (compose.yaml only,
no override) with real Docker, and check it through nginx.

One stack per framework serves every test in this module, in order: the tests
that stop the database or restart the stack come last.
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid

import docker
import pytest
import requests
from PIL import Image
from python_on_whales import DockerClient

from conftest import FRAMEWORKS, ROOT, Stack, app_access_record, booted, render

spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts" / "screenshots.py")
screenshots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshots)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module", params=FRAMEWORKS)
def stack(request, tmp_path_factory):
    project = render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)
    with booted(project, request) as stack:
        yield stack


@pytest.fixture(scope="module")
def chromium():
    screenshots.build_chromium()


def canonical(page: str) -> str:
    match = re.search(r'<link rel="canonical" href="([^"]+)"', page)
    assert match, "the home page has no canonical link"
    return match.group(1)


def visits(page: str) -> int:
    match = re.search(r'id="visits">(\d+)<', page)
    assert match, "the home page shows no visit counter"
    return int(match.group(1))


def stylesheet(page: str) -> str:
    match = re.search(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert match, "the home page links no stylesheet"
    return match.group(1)


def test_health_endpoints_through_nginx(stack: Stack):
    healthz = stack.get("/healthz")
    assert healthz.status_code == 200
    assert healthz.json() == {"status": "ok", "release": stack.release}
    readyz = stack.get("/readyz")
    assert readyz.status_code == 200
    assert readyz.json()["status"] == "ok"


def test_home_page_counts_visits(stack: Stack):
    first = stack.get("/")
    second = stack.get("/")
    assert first.status_code == second.status_code == 200
    assert visits(second.text) == visits(first.text) + 1


def test_stylesheet_is_served_by_nginx_not_the_app(stack: Stack):
    url = stylesheet(stack.get("/").text)
    path = url.split("?")[0]
    response = stack.get(url)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/css")
    assert "max-age=31536000" in response.headers["Cache-Control"], (
        "versioned assets get a long cache lifetime"
    )
    on_disk_path = "/usr/share/nginx/static/" + path.removeprefix("/static/")
    on_disk = stack.compose("exec", "-T", "nginx", "cat", on_disk_path)
    assert response.content == on_disk.stdout.encode()
    assert path not in stack.compose("logs", "--no-color", "app").stdout, "the app served a static file"


def test_the_pages_as_chromium_draws_them(stack: Stack, chromium):
    """Through nginx, styled by the stylesheets it serves; the documentation
    site shows these screenshots (scripts/screenshots.py)."""
    nginx = stack.compose("ps", "-q", "nginx").stdout.strip()
    framework = "django" if (stack.project / "manage.py").exists() else "flask"
    for name, (path, _) in screenshots.PAGES[framework].items():
        with Image.open(screenshots.take(nginx, path, screenshots.SCREENSHOTS / name)) as shot:
            page = shot.convert("RGB")
        assert page.size == screenshots.WINDOW
        if path == "/":
            # site.css centres a column at most 40rem wide: unstyled, the
            # text would start 8 px from the left.
            background = page.getpixel((0, 0))
            drawn = [
                x
                for x in range(page.width)
                for y in range(0, page.height, 4)
                if page.getpixel((x, y)) != background
            ]
            assert drawn and min(drawn) > page.width // 6, (
                f"{name}: the text starts at x={min(drawn, default=None)}"
            )
        else:
            # The admin's header, in its stylesheet's colour (#417690).
            colours = {colour: count for count, colour in page.getcolors(page.width * page.height)}
            header = colours.get((0x41, 0x76, 0x90), 0)
            assert header > 5000, f"{name}: {header} pixels of the admin's header colour"


def test_security_headers_and_no_version_leak(stack: Stack):
    response = stack.get("/")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Server"] == "nginx"


def test_text_is_gzipped(stack: Stack):
    url = stylesheet(stack.get("/").text)
    response = stack.get(url, headers={"Accept-Encoding": "gzip"}, stream=True)
    assert response.headers.get("Content-Encoding") == "gzip"
    assert "Accept-Encoding" in response.headers.get("Vary", "")


def test_unknown_host_is_refused(stack: Stack):
    with pytest.raises(requests.ConnectionError):
        stack.get("/healthz", host="attacker.example")


def test_client_forged_forwarded_headers_are_replaced(stack: Stack):
    probe = uuid.uuid4().hex
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Port": "6666",
    }
    response = stack.get(f"/?probe={probe}", headers=forged)
    assert response.status_code == 200
    # nginx replaced the client's X-Forwarded-Proto, -Host and -Port with its
    # own: the app builds its URLs with the scheme and port the client used.
    assert canonical(response.text) == f"http://localhost:{stack.http_port}/"
    assert stack.http_port != 6666
    # Gunicorn logs the client address it took from X-Forwarded-For.
    record = app_access_record(stack, probe)
    assert record["client"] != "6.6.6.6" and re.fullmatch(r"[0-9a-f.:]+", record["client"]), record


def test_forwarded_https_from_the_trusted_hop_builds_https_urls(stack: Stack):
    # nginx is the trusted hop: a request from its container with
    # X-Forwarded-Proto: https is what the TLS-terminating proxy sends.
    headers = {
        "Host": "example.com",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "example.com",
        "X-Forwarded-Port": "443",
        "X-Forwarded-For": "203.0.113.9",
    }
    curl = ["curl", "-fsS", *[arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]]
    result = stack.compose("exec", "-T", "nginx", *curl, "http://app:8000/")
    assert canonical(result.stdout) == "https://example.com/"


def test_a_forged_port_in_the_host_header_is_not_believed(stack: Stack):
    # nginx tells the app the port it really published, whatever port the
    # client wrote after the host name.
    response = stack.get("/", headers={"Host": "localhost:6666"})
    assert response.status_code == 200
    assert canonical(response.text) == f"http://localhost:{stack.http_port}/"


def test_dotfiles_and_leftovers_under_static_are_refused(stack: Stack):
    # Written beside the published static files, by the image that publishes
    # them: nginx must refuse the names, not merely lack the files.
    refused = [".env.bak", ".hidden", "css/site.css~", "x.orig", ".git/config", "notes.txt.swp"]
    write = (
        "import pathlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    path = pathlib.Path('/srv/static', name)\n"
        "    path.parent.mkdir(parents=True, exist_ok=True)\n"
        "    path.write_text('SECRET_KEY=leaked\\n')\n"
    )
    probe = f"probe-{uuid.uuid4().hex}.txt"
    stack.compose("run", "--rm", "--no-deps", "migrate", "python", "-c", write, probe, *refused)
    assert stack.get(f"/static/{probe}").text == "SECRET_KEY=leaked\n", "the written files are not served"
    for name in refused:
        response = stack.get(f"/static/{name}")
        assert response.status_code == 404, f"/static/{name} answered {response.status_code}"
        assert "leaked" not in response.text


def test_image_runs_as_non_root_with_a_healthcheck(stack: Stack):
    client = docker.from_env()
    app = client.containers.get(stack.compose("ps", "-q", "app").stdout.strip())
    config = app.image.attrs["Config"]
    assert config["User"] and config["User"].split(":")[0] not in ("", "0", "root")
    assert config["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL")
    assert app.attrs["State"]["Health"]["Status"] == "healthy"
    assert app.exec_run("id -u").output.decode().strip() != "0"
    assert config["Env"] and any(e.startswith("PYTHONUNBUFFERED=") for e in config["Env"])
    # Nothing but nginx's network end, edge, publishes a port (asked through
    # python-on-whales' compose API this time, as a second opinion on the
    # same engine).
    whales = DockerClient(compose_files=[stack.project / "compose.yaml"], compose_project_name=stack.name)
    running = whales.compose.ps()
    assert {c.config.labels["com.docker.compose.service"] for c in running} == {"db", "app", "edge", "nginx"}
    for container in running:
        service = container.config.labels["com.docker.compose.service"]
        published = {k: v for k, v in (container.network_settings.ports or {}).items() if v}
        assert bool(published) == (service == "edge"), f"{service} publishes {published}"


# Run in the app's container: what the image left out, and that what the
# app loads still works without it.
LEFT_OUT = """
import json, pathlib, boto3, botocore
data = pathlib.Path(botocore.__file__).parent / "data"
boto3.client("s3", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
boto3.client("sts", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
locale = list(pathlib.Path("/opt/venv").rglob("locale/*/LC_MESSAGES/*"))
print(json.dumps({
    "botocore services": sorted(p.name for p in data.iterdir() if p.is_dir()),
    "translation files": sorted({p.suffix for p in locale}),
}))
"""
TRANSLATED = """
import django
from django.utils import translation
django.setup()
with translation.override("fr"):
    print(translation.gettext("Yes"))
"""


def test_the_image_leaves_out_what_the_app_never_loads(stack: Stack):
    app = docker.from_env().containers.get(stack.compose("ps", "-q", "app").stdout.strip())
    result = app.exec_run(["python", "-c", LEFT_OUT])
    assert result.exit_code == 0, result.output.decode()
    found = json.loads(result.output.decode().splitlines()[-1])
    assert found["botocore services"] == ["s3", "signin", "sso", "sso-oidc", "sts"]
    if (stack.project / "manage.py").exists():  # Django
        assert found["translation files"] == [".mo"]
        result = app.exec_run(["python", "-c", TRANSLATED])
        assert result.output.decode().strip() == "Oui", result.output.decode()


def test_readyz_follows_the_database(stack: Stack):
    stack.compose("stop", "db")
    try:
        stack.wait_for("/readyz", 503, timeout=30)
        assert stack.get("/healthz").status_code == 200
        assert stack.get("/readyz").json()["status"] == "unavailable"
    finally:
        stack.compose("start", "db")
    stack.wait_for("/readyz", 200, timeout=60)


def test_data_survives_down_and_up(stack: Stack):
    before = visits(stack.get("/").text)
    stack.compose("down")
    stack.up()
    stack.wait_for("/readyz", 200)
    assert visits(stack.get("/").text) == before + 1
