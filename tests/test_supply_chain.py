"""Supply chain: the generated project's dependency audit (nox -s audit),
workflow audit (nox -s zizmor) and the SBOM that scripts/deploy ships with
each release (the workflows' signing and attestation: test_workflows.py).

The sessions run for real, with the pip-audit and zizmor that the noxfile
pins. OSV's API is not reachable from this machine (and PyPI's per-version
JSON, pip-audit's other source, is not served by its mirror), so the audit
asks a stand-in on localhost that answers OSV's query API from a real
advisory record, matching versions as OSV does.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.markers import Marker, default_environment
from packaging.version import Version

from conftest import FRAMEWORKS, render
from fakelaptop import Fake
from fakeserver import Server
from workflowfiles import load

BIN = Path(sys.executable).parent

# GHSA-h5c8-rqwp-cp95 (CVE-2024-22195) as OSV publishes it, trimmed to what
# pip-audit reads: Jinja's xmlattr filter, fixed in 3.1.3 (Jinja's release notes).
JINJA_ADVISORY = {
    "schema_version": "1.6.0",
    "id": "GHSA-h5c8-rqwp-cp95",
    "aliases": ["CVE-2024-22195"],
    "summary": "Jinja vulnerable to HTML attribute injection when passing user input as keys to xmlattr filter",  # noqa: E501
    "published": "2024-01-11T15:20:48Z",
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "jinja2", "purl": "pkg:pypi/jinja2"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.1.3"}]}],
        }
    ],
}


# Jinja 3.1.2's entry in a uv.lock, its files and hashes as PyPI publishes them.
JINJA_3_1_2 = """\
name = "jinja2"
version = "3.1.2"
source = { registry = "https://pypi.org/simple" }
dependencies = [
    { name = "markupsafe" },
]
sdist = { url = "https://files.pythonhosted.org/packages/7a/ff/75c28576a1d900e87eb6335b063fab47a8ef3c8b4d88524c4bf78f670cce/Jinja2-3.1.2.tar.gz", hash = "sha256:31351a702a408a9e7595a8fc6150fc3f43bb6bf7e319770cbc0db9df9437e852", size = 268239, upload-time = "2022-04-28T17:21:27.579Z" }
wheels = [
    { url = "https://files.pythonhosted.org/packages/bc/c3/f068337a370801f372f2f8f6bad74a5c140f6fda3d9de154052708dd3c65/Jinja2-3.1.2-py3-none-any.whl", hash = "sha256:6088930bfe239f0e6710546ab9c19c9ef35e29792895fed6e6e31a023a182a61", size = 133101, upload-time = "2022-04-28T17:21:25.336Z" },
]

"""  # noqa: E501


def affects(advisory: dict, name: str, version: str) -> bool:
    """OSV's matching for ECOSYSTEM ranges: introduced <= version < fixed."""
    for affected in advisory["affected"]:
        if affected["package"]["name"] != name:
            continue
        for event_range in affected["ranges"]:
            events = {key: value for event in event_range["events"] for key, value in event.items()}
            fixed = Version(events["fixed"]) if "fixed" in events else None
            current = Version(version)
            if Version(events.get("introduced", "0")) <= current and (fixed is None or current < fixed):
                return True
    return False


@pytest.fixture(scope="module")
def osv():
    """OSV's POST /v1/query on localhost; `queries` records each (name, version) asked."""
    queries: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name, version = query["package"]["name"], query["version"]
            assert self.path == "/v1/query" and query["package"]["ecosystem"] == "PyPI"
            queries.append((name, version))
            vulns = [JINJA_ADVISORY] if affects(JINJA_ADVISORY, name, version) else []
            body = json.dumps({"vulns": vulns} if vulns else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.queries = queries
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def flask_project(tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("flask") / "project", framework="flask")


@pytest.fixture(scope="module")
def envdir(tmp_path_factory) -> Path:
    """One nox envdir for the module: pip-audit and zizmor install once."""
    return tmp_path_factory.mktemp("nox-envs")


def nox(project: Path, envdir: Path, *args: str) -> subprocess.CompletedProcess:
    # uv on PATH, as `uvx nox` has it; no GitHub token: zizmor's offline audits only.
    env = {key: value for key, value in os.environ.items() if key not in ("GH_TOKEN", "GITHUB_TOKEN")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-m", "nox", "--noxfile", str(project / "noxfile.py"), "--envdir", str(envdir)]
    return subprocess.run(
        [*command, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def locked(lock: dict, *, dev: bool, linux: bool = False) -> set[tuple[str, str]]:
    """(name, version) of every package uv.lock installs: the project's
    dependencies and theirs (with the extras asked for), the dev group's too
    when asked; the project not. `linux`: only those a Linux CPython installs."""
    packages = {package["name"]: package for package in lock["package"]}
    root = next(package for package in lock["package"] if package["source"].get("virtual"))
    edges = list(root.get("dependencies", []))
    if dev:
        edges += [edge for group in root.get("dev-dependencies", {}).values() for edge in group]
    environment = {**default_environment(), "sys_platform": "linux", "implementation_name": "cpython"}
    seen: set[str] = set()
    while edges:
        edge = edges.pop()
        if linux and "marker" in edge and not Marker(edge["marker"]).evaluate(environment):
            continue
        package = packages[edge["name"]]
        for extra in edge.get("extra", []):
            edges += package["optional-dependencies"][extra]
        if edge["name"] not in seen:
            seen.add(edge["name"])
            edges += package.get("dependencies", [])
    return {(name, packages[name]["version"]) for name in seen}


def test_audit_session_queries_every_locked_package_and_passes(flask_project, envdir, osv):
    osv.queries.clear()
    result = nox(flask_project, envdir, "-s", "audit", "--", "--osv-url", osv.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No known vulnerabilities found" in result.stdout + result.stderr
    lock = tomllib.loads((flask_project / "uv.lock").read_text())
    # Every package of the lock that Linux installs, the dev group's included, exactly as pinned.
    assert set(osv.queries) == locked(lock, dev=True, linux=True)
    assert ("jinja2", "3.1.2") not in osv.queries


def test_audit_session_fails_on_a_lock_with_a_known_vulnerable_version(flask_project, envdir, osv, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(flask_project, project, ignore=shutil.ignore_patterns(".nox"))
    lock = project / "uv.lock"
    entry = re.compile(r'^name = "jinja2"\nversion = .*?\n\n', re.DOTALL | re.MULTILINE)
    text, count = entry.subn(JINJA_3_1_2.replace("\\", "\\\\"), lock.read_text())
    assert count == 1
    lock.write_text(text)
    osv.queries.clear()
    result = nox(project, envdir, "-s", "audit", "--", "--osv-url", osv.url)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert ("jinja2", "3.1.2") in osv.queries, output
    assert re.search(r"jinja2\s+3\.1\.2\s+(CVE-2024-22195|GHSA-h5c8-rqwp-cp95)\s+3\.1\.3", output), output
    assert "Session audit failed" in output


def test_zizmor_session_passes_the_workflows_and_catches_an_injection(flask_project, envdir, tmp_path):
    result = nox(flask_project, envdir, "-s", "zizmor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Session zizmor was successful" in result.stderr

    project = tmp_path / "project"
    shutil.copytree(flask_project, project, ignore=shutil.ignore_patterns(".nox"))
    (project / ".github" / "workflows" / "greet.yml").write_text(
        "name: Greet\non: pull_request_target\npermissions: {}\njobs:\n  greet:\n"
        "    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
    )
    result = nox(project, envdir, "-s", "zizmor")
    assert result.returncode != 0
    assert "template-injection" in result.stdout + result.stderr


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_deploy_ships_a_valid_sbom_of_exactly_the_locked_production_packages(framework, tmp_path):
    project = render(tmp_path / "project", framework=framework)
    fake = Fake(project, tmp_path)
    fake.env["PATH"] = f"{fake.env['PATH']}{os.pathsep}{BIN}"  # uv, after the fake ssh and docker
    result = fake.run("deploy", "host", "rel1")
    assert result.returncode == 0, result.stderr
    stream = (fake.log / "shipped.tar").read_bytes()
    size, _, rest = stream.partition(b"\n")
    with tarfile.open(fileobj=io.BytesIO(rest[: int(size)])) as archive:
        assert "scripts/server.sh" in archive.getnames()
        text = archive.extractfile("sbom.cdx.json").read().decode()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    sbom = json.loads(text)
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    components = {(c["name"], c["version"]) for c in sbom["components"]}
    lock = tomllib.loads((project / "uv.lock").read_text())
    # What the image installs (the Dockerfile exports with --no-dev): no test or lint tools.
    assert components == locked(lock, dev=False)
    assert {"pytest", "ruff"}.isdisjoint(name for name, _ in components)
    assert all(c["purl"] == f"pkg:pypi/{c['name']}@{c['version']}" for c in sbom["components"])


def test_deploy_without_uv_ships_no_sbom_and_says_so(tmp_path):
    project = render(tmp_path / "project")
    fake = Fake(project, tmp_path)
    # The system's tools only: no uv.
    fake.env["PATH"] = os.pathsep.join(
        part for part in fake.env["PATH"].split(os.pathsep) if not (Path(part) / "uv").exists()
    )
    result = fake.run("deploy", "host", "rel1")
    assert result.returncode == 0, result.stderr
    assert "no SBOM with this release: install uv" in result.stdout
    stream = (fake.log / "shipped.tar").read_bytes()
    size, _, rest = stream.partition(b"\n")
    with tarfile.open(fileobj=io.BytesIO(rest[: int(size)])) as archive:
        assert "sbom.cdx.json" not in archive.getnames() and "scripts/deploy" in archive.getnames()


@pytest.fixture(scope="module")
def ci(flask_project) -> dict:
    return load(flask_project / ".github" / "workflows" / "ci.yml")


def test_the_pushed_image_is_multi_arch_with_sbom_and_provenance_from_the_tested_cache(ci):
    build = ci["jobs"]["build"]
    pushes = [s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    tested, publish = pushes
    assert publish["id"] == "publish" and publish["if"] == "inputs.push" and "if" not in tested
    options = publish["with"]
    assert options["platforms"].split(",") == ["linux/amd64", "linux/arm64"]
    assert options["push"] is True and options["sbom"] is True and options["provenance"] == "mode=max"
    # The same source, target, build args and tag as the tested build, from its layer cache.
    for key in ("context", "target", "build-args", "labels", "cache-from"):
        assert options[key] == tested["with"][key], key
    assert options["tags"] == tested["with"]["tags"].splitlines()[0]
    assert tested["with"]["cache-to"] == "type=gha,mode=max", "every tested layer must be cached"
    # arm64 runs under QEMU, set up before buildx, for the push only.
    qemu = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/setup-qemu-action@"))
    buildx = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/setup-buildx-action@"))
    assert qemu["if"] == "inputs.push" and "arm64" in qemu["with"]["platforms"]
    assert build["steps"].index(qemu) < build["steps"].index(buildx)
    # What deploy.yml deploys is the manifest list's digest.
    assert ci["on"]["workflow_call"]["outputs"]["digest"]["value"] == "${{ jobs.build.outputs.digest }}"


def test_the_pushed_digest_is_attested_and_signed_keylessly(ci):
    sign = ci["jobs"]["sign"]
    # Where GitHub attests (public repositories) and Sigstore's public log reveals nothing private.
    assert sign["needs"] == "build"
    assert sign["if"] == "inputs.push && github.event.repository.visibility == 'public'"
    assert sign["permissions"]["id-token"] == "write"
    uses = {s["uses"].split("@")[0]: s for s in sign["steps"] if "uses" in s}
    attest = uses["actions/attest-build-provenance"]["with"]
    assert attest == {
        "subject-name": "${{ needs.build.outputs.name }}",
        "subject-digest": "${{ needs.build.outputs.digest }}",
        "push-to-registry": True,
    }
    assert "sigstore/cosign-installer" in uses and "docker/login-action" in uses
    cosign = next(s for s in sign["steps"] if "run" in s)
    assert cosign["run"] == 'cosign sign --yes "$IMAGE"'
    # By digest, never by tag: a tag can be moved to another image.
    assert cosign["env"]["IMAGE"] == "${{ needs.build.outputs.name }}@${{ needs.build.outputs.digest }}"


def test_the_push_step_outputs_the_name_the_signatures_are_stored_under(ci, tmp_path):
    """The build job's push step, run as GitHub runs it (bash, GITHUB_OUTPUT)."""
    push = next(s for s in ci["jobs"]["build"]["steps"] if s.get("id") == "push")
    output = tmp_path / "output"
    env = {**os.environ, "GITHUB_OUTPUT": str(output), "IMAGE": "ghcr.io/owner/repo:0123abc",
           "DIGEST": "sha256:" + "a" * 64}  # fmt: skip
    subprocess.run(["bash", "-e", "-c", push["run"]], env=env, check=True)
    assert output.read_text().splitlines() == [
        "name=ghcr.io/owner/repo",
        "image=ghcr.io/owner/repo:0123abc",
        "digest=sha256:" + "a" * 64,
    ]


def test_the_shipped_sbom_is_the_live_releases_on_the_server(tmp_path):
    """server.sh puts the staged files in place: the SBOM lands beside compose.yaml."""
    project = render(tmp_path / "project")
    fake = Fake(project, tmp_path)
    fake.env["PATH"] = f"{fake.env['PATH']}{os.pathsep}{BIN}"
    assert fake.run("deploy", "host", "rel1").returncode == 0
    stream = (fake.log / "shipped.tar").read_bytes()
    size, _, rest = stream.partition(b"\n")
    server = Server(tmp_path / "server")
    stage = server.app_dir / "deploys" / "incoming.test"
    stage.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(rest[: int(size)])) as archive:
        archive.extractall(stage, filter="data")
        shipped = archive.extractfile("sbom.cdx.json").read()
    result = server.call(f"install_staged {stage}")
    assert result.returncode == 0, result.stderr
    assert (server.app_dir / "sbom.cdx.json").read_bytes() == shipped
    assert not stage.exists()
