"""Email (issue 13, part 4): EMAIL_URL sets where mail goes; with background
jobs a worker sends it, without them the app; development has a mail server
of its own whose log shows each message.

Render tests, without an engine: the settings reach the services that send,
only those gain a way out of the internal network, the development stack
sends to its `mail` service whatever .env says, aiosmtpd stays out of the
production image, and EMAIL_URL's mistakes are one line without the password.

Docker tests: one production stack per framework, with EMAIL_URL pointing at
an aiosmtpd server this test runs on the host (host.docker.internal, mapped
with extra_hosts: host-gateway, which Linux and Docker Desktop both know).
Django, jobs on: a user asks for a password reset through nginx, the worker
mails the link, the test follows it through nginx, sets a new password and
signs in with it. Flask, jobs off: the home page's form mails a notification
from the app. And the development stack's `mail` service prints what it gets.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys
import time
from email import message_from_bytes
from email.message import Message

import pytest
import requests
import yaml
from aiosmtpd.controller import Controller

from conftest import FRAMEWORKS, Stack, compose_config, prepare_images, render

# Django's reset takes the worker's path, Flask's notification the app's.
JOBS = {"django": True, "flask": False}
SENDERS = {True: {"app", "worker"}, False: {"app"}}


# --- Render level: both frameworks, both answers for the jobs, no engine ---


@pytest.fixture(scope="module", params=FRAMEWORKS)
def projects(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    return {
        jobs: render(root / str(jobs), framework=request.param, background_jobs=jobs)
        for jobs in (False, True)
    }


@pytest.mark.parametrize("jobs", [False, True])
def test_the_senders_get_the_settings_and_a_way_out_and_no_one_else_does(projects, jobs):
    env = {"EMAIL_URL": "smtp+tls://user:key@mx.example.net:587", "DEFAULT_FROM_EMAIL": "site@example.net"}
    config = compose_config(projects[jobs], env=env)
    services, networks = config["services"], config["networks"]
    assert "mail" not in services, "the development mail server is not part of production"
    for name in SENDERS[jobs]:
        assert {k: services[name]["environment"][k] for k in env} == env, name
    open_networks = {name for name, network in networks.items() if not network.get("internal")}
    with_a_way_out = {name for name, s in services.items() if set(s.get("networks", {})) & open_networks}
    # edge holds nginx's networks (nginx runs in its network namespace).
    assert with_a_way_out == SENDERS[jobs] | {"edge"}
    assert networks["backend"]["internal"] is True
    if jobs:
        assert set(services["worker"]["networks"]) == {"backend", "outbound"}
        outbound = [name for name, service in services.items() if "outbound" in service.get("networks", {})]
        assert outbound == ["worker"]


def test_development_mails_its_own_server_whatever_env_says(projects):
    project = projects[True]
    config = compose_config(
        project, "compose.yaml", "compose.override.yaml", env={"EMAIL_URL": "smtp+tls://u:p@mx.example.net"}
    )
    services = config["services"]
    for name in ("app", "worker"):
        assert services[name]["environment"]["EMAIL_URL"] == "smtp://mail:1025", name
    mail = services["mail"]
    assert mail["command"] == ["aiosmtpd", "--nosetuid", "--listen", "0.0.0.0:1025"]
    assert mail["image"] == services["app"]["image"] and "ports" not in mail
    assert mail["cap_drop"] == ["ALL"] and mail["read_only"] is True
    assert mail["stop_signal"] == "SIGINT", "aiosmtpd stops on SIGINT only"
    docs = (project / "docs" / "email.md").read_text()
    assert "docker compose logs --follow mail" in docs


def test_the_mail_server_is_a_development_dependency_only(projects):
    for project in projects.values():
        export = [
            sys.executable,
            "-m",
            "uv",
            "export",
            "--frozen",
            "--no-emit-project",
            "--no-hashes",
            "--quiet",
        ]
        runtime = subprocess.run([*export, "--no-dev"], cwd=project, capture_output=True, text=True)
        development = subprocess.run(export, cwd=project, capture_output=True, text=True)
        assert runtime.returncode == development.returncode == 0, runtime.stderr + development.stderr
        assert re.search(r"^aiosmtpd==", development.stdout, re.M)
        assert not re.search(r"^aiosmtpd==", runtime.stdout, re.M)
    example = (projects[False] / ".env.example").read_text()
    assert re.search(r"^# EMAIL_URL=smtp\+tls://", example, re.M)
    assert re.search(r"^# DEFAULT_FROM_EMAIL=", example, re.M)


def load_mail_url(project):
    path = next(project.glob("*/mail_url.py"))
    spec = importlib.util.spec_from_file_location("mail_url_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_email_url_mistakes_stop_with_one_line_and_never_the_password(projects):
    mail_url = load_mail_url(projects[False])
    assert mail_url.parse("smtp+ssl://me%40example.com:s%2Fcret@mx.example.net") == mail_url.MailURL(
        "smtp+ssl", "mx.example.net", 465, "me@example.com", "s/cret"
    )
    for url in (
        "smtps://me:hunter2@mx",
        "me:hunter2@mx",
        "smtp+tls://me:hunter2@mx:port",
        "smtp://me:hunter2@",
    ):
        with pytest.raises(mail_url.MailURLError) as raised:
            mail_url.parse(url)
        message = str(raised.value)
        assert "hunter2" not in message and "\n" not in message and "EMAIL_URL" in message, message


# --- On the engine: a production stack per framework, mail to the host ---


class Inbox:
    """An aiosmtpd handler that keeps each message, with the address it came from."""

    def __init__(self):
        self.messages: list[tuple[str, Message]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((session.peer[0], message_from_bytes(envelope.content)))
        return "250 Message accepted"

    def wait(self, count: int = 1, timeout: float = 40) -> Message:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(self.messages) >= count, f"{len(self.messages)} messages arrived, {count} expected"
        return self.messages[count - 1][1]


@pytest.fixture(scope="module")
def inbox():
    """An SMTP server on every address of this machine, on a free port."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    inbox = Inbox()
    server = Controller(inbox, hostname="", port=port)
    server.start()
    inbox.port = port
    yield inbox
    server.stop()


@pytest.fixture(scope="module", params=FRAMEWORKS)
def stack(request, tmp_path_factory, inbox):
    framework = request.param
    project = render(
        tmp_path_factory.mktemp(framework) / "project", framework=framework, background_jobs=JOBS[framework]
    )
    # The senders, and the database to show it has no way out, may name the host.
    mapped = {
        name: {"extra_hosts": ["host.docker.internal:host-gateway"]}
        for name in {"db"} | SENDERS[JOBS[framework]]
    }
    (project / "compose.mail-test.yaml").write_text(yaml.safe_dump({"services": mapped}))
    prepare_images(project)
    stack = Stack(project, files=("compose.yaml", "compose.mail-test.yaml"))
    stack.env["EMAIL_URL"] = f"smtp://host.docker.internal:{inbox.port}"
    stack.framework = framework
    failed_before = request.session.testsfailed
    try:
        stack.up("--build")
        yield stack
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n--- docker compose logs ({project}) ---\n{stack.logs()}")
        stack.down()


def form_post(session: requests.Session, stack: Stack, url: str, data: dict) -> requests.Response:
    """GET the form at URL, then POST DATA to it with its CSRF token, as a browser does."""
    page = session.get(url, headers={"Host": f"localhost:{stack.http_port}"}, timeout=10)
    assert page.status_code == 200, (url, page.status_code, page.text[:500])
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    data = {**data, "csrfmiddlewaretoken": token.group(1)} if token else data
    headers = {"Host": f"localhost:{stack.http_port}"}
    return session.post(page.url, data=data, headers=headers, allow_redirects=False, timeout=10)


def get(session: requests.Session, stack: Stack, url: str) -> requests.Response:
    return session.get(url, headers={"Host": f"localhost:{stack.http_port}"}, timeout=10)


def django_password_reset(stack: Stack, inbox: Inbox) -> None:
    # Only a user with a usable password gets a reset mail.
    create = (
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('ada', 'ada@example.com', 'an-old-passphrase')"
    )
    stack.compose("exec", "-T", "app", "python", "manage.py", "shell", "-c", create)
    before = len(inbox.messages)
    with requests.Session() as session:
        reset = f"{stack.url}/accounts/password-reset/"
        asked = form_post(session, stack, reset, {"email": "ada@example.com"})
        assert (asked.status_code, asked.headers["Location"]) == (302, "/accounts/password-reset/sent/")
        message = inbox.wait(before + 1)
        assert message["To"] == "ada@example.com" and message["From"] == "noreply@example.com"
        body = message.get_payload(decode=True).decode()
        # The link names the site as the visitor reached it, through nginx.
        link = re.search(rf"{re.escape(stack.url)}/accounts/reset/\S+/", body)
        assert link, body
        new = "a-new-passphrase-42"
        done = form_post(session, stack, link.group(0), {"new_password1": new, "new_password2": new})
        assert (done.status_code, done.headers["Location"]) == (302, "/accounts/reset/done/"), done.text[:500]
    with requests.Session() as session:
        login = {"username": "ada", "password": new}
        signed_in = form_post(session, stack, f"{stack.url}/accounts/login/", login)
        assert (signed_in.status_code, signed_in.headers["Location"]) == (302, "/"), signed_in.text[:500]
        assert '<strong id="user">ada</strong>' in get(session, stack, stack.url + "/").text
        assert 'id="reset-invalid"' in get(session, stack, link.group(0)).text, "a reset link works once"
    # The worker sent it, not the app.
    worker = stack.compose("logs", "--no-color", "worker").stdout
    assert re.search(r"tasks\.send_email\[[0-9a-f-]+\] succeeded", worker), worker[-3000:]


def flask_notification(stack: Stack, inbox: Inbox) -> None:
    before = len(inbox.messages)
    with requests.Session() as session:
        assert 'action="/notify"' in get(session, stack, stack.url + "/").text
        headers = {"Host": f"localhost:{stack.http_port}"}
        notify = f"{stack.url}/notify"
        sent = session.post(notify, data={"email": "ada@example.com"}, headers=headers, allow_redirects=False)
        assert (sent.status_code, sent.headers["Location"]) == (303, "/"), sent.text[:500]
        message = inbox.wait(before + 1)
        assert message["To"] == "ada@example.com" and message["From"] == "noreply@example.com"
        assert message["Subject"] == "A notification from My App"
        assert f"{stack.url}/" in message.get_payload(decode=True).decode()
        assert "A notification is on its way to ada@example.com." in get(session, stack, stack.url + "/").text
        forged = {"email": "ada@example.com\r\nBcc: eve@example.com"}
        assert session.post(notify, data=forged, headers=headers, timeout=10).status_code == 400
    assert len(inbox.messages) == before + 1


@pytest.mark.docker
def test_mail_from_the_site_arrives_with_links_through_nginx(stack, inbox):
    if stack.framework == "django":
        django_password_reset(stack, inbox)
    else:
        flask_notification(stack, inbox)


@pytest.mark.docker
def test_the_database_still_has_no_way_out(stack, inbox):
    probe = f"exec 3<>/dev/tcp/host.docker.internal/{inbox.port}"
    reached = stack.compose("exec", "-T", "db", "timeout", "5", "bash", "-c", probe, check=False)
    assert reached.returncode != 0, "the database reached the host's SMTP server"
    for sender in SENDERS[JOBS[stack.framework]]:
        python = f"import socket; socket.create_connection(('host.docker.internal', {inbox.port}), 5).close()"
        reached = stack.compose("exec", "-T", sender, "python", "-c", python, check=False)
        assert reached.returncode == 0, f"{sender} cannot reach the mail server: {reached.stderr}"


@pytest.mark.docker
def test_the_development_mail_server_prints_each_message(tmp_path):
    """The `mail` service is the same for both frameworks: Flask's project
    sends to it from a one-off development container, as the app would."""
    project = render(tmp_path / "project", framework="flask")
    prepare_images(project)
    stack = Stack(project, files=("compose.yaml", "compose.override.yaml"))
    # .env's EMAIL_URL does not matter: development mails its own server.
    stack.env["EMAIL_URL"] = "smtp+tls://user:key@mx.example.net"
    send = (
        "from my_app import create_app, mail\n"
        "with create_app().app_context():\n"
        "    assert mail.deliver('dev@example.com', 'Hello from development', 'Look: it arrived.')\n"
    )
    try:
        stack.compose("up", "-d", "--build", "--wait", "mail")
        sent = stack.compose("run", "--rm", "--no-deps", "app", "python", "-c", send, check=False)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 10
        while "END MESSAGE" not in (logs := stack.compose("logs", "--no-color", "mail").stdout):
            assert time.monotonic() < deadline, logs
            time.sleep(0.5)
        assert "To: dev@example.com" in logs and "Subject: Hello from development" in logs, logs
        assert "Look: it arrived." in logs, logs
    finally:
        stack.down()
