"""How a deploy sends the app's image, fast (fake ssh and docker, see
tests/fakelaptop.py): through a registry on the laptop that the server
pulls from over the SSH connection, so that only the layers it lacks
travel; the whole image (docker save) when that cannot run. The real thing,
on a throwaway VPS: tests/test_deploy.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import render
from fakelaptop import Fake


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("layers") / "project")


@pytest.fixture
def fake(project, tmp_path) -> Fake:
    return Fake(project, tmp_path)


def deploy_stream(fake: Fake) -> str:
    (command,) = [c for c in fake.server_commands if "bash -c " in c]
    return command


def test_the_server_pulls_the_app_image_from_a_registry_here(fake):
    result = fake.run("deploy", "vps", "rel1", FAKE_SERVER_LACKS="1")
    assert result.returncode == 0, result.stderr
    docker = fake.lines("docker")
    # Pushed to the registry started here, under a name used for that only.
    (run,) = [line for line in docker if line.startswith("run ")]
    started = r"run --detach --rm --name my_app-deploy-layers-\d+ --publish 127.0.0.1::5000 registry:3"
    assert re.fullmatch(started, run), run
    assert "tag my_app:rel1 127.0.0.1:40000/my_app:rel1" in docker
    assert "push --quiet 127.0.0.1:40000/my_app:rel1" in docker
    pushed = docker.index("push --quiet 127.0.0.1:40000/my_app:rel1")
    assert docker.index("image rm 127.0.0.1:40000/my_app:rel1") > pushed
    # The server reaches it through a port forwarded over the deploy's connection.
    assert any("-O forward -R 0:127.0.0.1:40000 deploy@vps" in line for line in fake.lines("argv"))
    assert "--fetch 127.0.0.1:41000/my_app:rel1" in deploy_stream(fake)
    assert "--load" not in deploy_stream(fake)
    assert not [line for line in docker if line.startswith("save ")]
    # The registry goes when the deploy ends.
    assert docker[-1] == "stop registry-1"
    assert "the server pulls the layers it lacks from here" in result.stdout


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"FAKE_NO_REGISTRY": "1"}, "could not start registry:3 here: port is already allocated"),
        ({"FAKE_SSH_NO_FORWARD": "1"}, "deploy@vps refuses to forward a port to this machine"),
    ],
)
def test_without_a_registry_here_the_whole_image_goes(fake, env, reason):
    result = fake.run("deploy", "vps", "rel1", FAKE_SERVER_LACKS="1", **env)
    assert result.returncode == 0, result.stderr
    assert f"--> my_app:rel1 goes whole: {reason}" in result.stdout
    docker = fake.lines("docker")
    assert any(line.startswith("save ") and "my_app:rel1" in line for line in docker), docker
    assert "--tag my_app:rel1" in deploy_stream(fake) and "--load" in deploy_stream(fake)
    assert "--fetch" not in deploy_stream(fake)
    # A registry that started is stopped all the same.
    assert ("stop registry-1" in docker) == ("FAKE_NO_REGISTRY" not in env)


def test_an_image_the_server_has_starts_no_registry(fake):
    result = fake.run("deploy", "vps", "rel1")
    assert result.returncode == 0, result.stderr
    assert "image my_app:rel1 is already on the server" in result.stdout
    assert not [line for line in fake.lines("docker") if line.startswith(("run ", "push "))]
