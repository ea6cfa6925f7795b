"""Django-only stack tests: the admin through nginx, CSRF behind the proxy, and
`check --deploy` in the built image. The checks both frameworks share are in
test_stack.py; the project's own pytest suite runs in test_workflow_sessions.py.
"""

from __future__ import annotations

import re

import pytest
import requests

from conftest import Stack, booted, render

pytestmark = pytest.mark.docker

ADMIN = {"username": "admin", "email": "admin@example.com", "password": "correct horse battery staple"}


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    project = render(tmp_path_factory.mktemp("django") / "project", framework="django")
    with booted(project, request) as stack:
        # The README's one-liner, made non-interactive with DJANGO_SUPERUSER_*.
        env = [f"--env=DJANGO_SUPERUSER_{key.upper()}={value}" for key, value in ADMIN.items()]
        createsuperuser = ["python", "manage.py", "createsuperuser", "--noinput"]
        stack.compose("run", "--rm", "--no-deps", *env, "app", *createsuperuser)
        yield stack


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "the login form has no CSRF token"
    return match.group(1)


def test_admin_css_is_served_by_nginx_not_the_app(stack: Stack):
    page = stack.get("/admin/login/")
    assert page.status_code == 200
    match = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page.text)
    assert match, "the admin links no content-hashed base.css"
    css = stack.get(match.group(1))
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    assert "immutable" in css.headers["Cache-Control"]
    on_disk_path = "/usr/share/nginx/static/" + match.group(1).removeprefix("/static/")
    on_disk = stack.compose("exec", "-T", "nginx", "cat", on_disk_path)
    assert css.content == on_disk.stdout.encode()
    assert match.group(1) not in stack.compose("logs", "--no-color", "app").stdout, (
        "the app served a static file"
    )


def test_admin_login_through_nginx(stack: Stack):
    session = requests.Session()
    origin = f"http://localhost:{stack.http_port}"
    token = csrf_token(session.get(origin + "/admin/login/", timeout=10).text)
    response = session.post(
        origin + "/admin/login/?next=/admin/",
        data={"username": ADMIN["username"], "password": ADMIN["password"], "csrfmiddlewaretoken": token},
        headers={"Origin": origin, "Referer": origin + "/admin/login/"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text[:2000]
    assert response.headers["Location"] == "/admin/"
    assert "Site administration" in session.get(origin + "/admin/", timeout=10).text


def curl_from_nginx(stack: Stack, *args: str) -> str:
    """A request to the app from the nginx container: the one peer whose
    X-Forwarded-* headers the app trusts (nginx overwrites a client's)."""
    return stack.compose("exec", "-T", "nginx", "curl", "-sS", *args).stdout


@pytest.mark.parametrize(("proto", "expected"), [("https", "302"), ("http", "403")])
def test_csrf_post_over_forwarded_https(stack: Stack, proto: str, expected: str):
    # A browser on https://localhost:8443 (TLS on a non-default port, so that
    # no default CSRF_TRUSTED_ORIGINS entry matches): the POST passes the
    # origin check only because the app believes X-Forwarded-Proto. Sent as
    # plain http instead, the same request must be refused.
    host = ["-H", "Host: localhost:8443", "-H", f"X-Forwarded-Proto: {proto}"]
    login = curl_from_nginx(stack, "-i", *host, "http://app:8000/admin/login/")
    cookie = re.search(r"^set-cookie: (csrftoken=[^;]+)", login, re.IGNORECASE | re.MULTILINE)
    assert cookie, login[:2000]
    browser = ["-H", "Origin: https://localhost:8443", "-H", f"Cookie: {cookie.group(1)}"]
    form = {
        "username": ADMIN["username"],
        "password": ADMIN["password"],
        "csrfmiddlewaretoken": csrf_token(login),
    }
    data = [arg for name, value in form.items() for arg in ("--data-urlencode", f"{name}={value}")]
    status = ["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"]
    result = curl_from_nginx(
        stack, *host, *browser, *data, *status, "http://app:8000/admin/login/?next=/admin/"
    )
    assert result.split()[0] == expected, result


@pytest.mark.parametrize("https_enabled", ["false", "true"])
def test_deploy_checks_pass_in_the_built_image(stack: Stack, https_enabled: str):
    run = ["run", "--rm", "--no-deps", f"--env=HTTPS_ENABLED={https_enabled}", "app"]
    deploy_check = ["python", "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    result = stack.compose(*run, *deploy_check, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
