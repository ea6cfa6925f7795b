"""The deploy scenario's restore step (tests/test_deploy.py's docstring
tells the whole scenario): scripts/restore puts back the rows of the backup
taken earlier, asks first, and refuses a truncated dump before it changes
anything. Same VPS, same project, in order after tests/test_deploy.py.
"""

from __future__ import annotations

import pytest

from deployscenario import COUNTER, TABLE_DIGEST
from vpshost import Scenario, psql, reason, script, site_release

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def project(deploy_project):
    return deploy_project


@pytest.fixture(scope="module")
def scenario(deploy_scenario) -> Scenario:
    return deploy_scenario


def test_restore_gives_back_the_backed_up_rows(vps, project, scenario):
    """Starts from relB serving, rolled back; the rows as the backup found them."""
    scenario.starts_after("rollback")
    psql(
        vps, project, "DELETE FROM deploy_rows WHERE id % 3 = 0; UPDATE deploy_rows SET payload = 'changed';"
    )
    changed = psql(vps, project, TABLE_DIGEST)
    assert changed != scenario.rows

    refused = script(vps, project, "restore", "vps", str(scenario.dump), input="no\n", check=False)
    assert refused.returncode != 0 and "nothing changed" in refused.stderr
    assert psql(vps, project, TABLE_DIGEST) == changed

    script(vps, project, "restore", "--yes", "vps", str(scenario.dump))
    assert psql(vps, project, TABLE_DIGEST) == scenario.rows
    assert psql(vps, project, COUNTER) == scenario.counter
    # The stack kept running, on the same release.
    assert site_release(vps) == scenario.rel_b
    scenario.done.append("restore")


def test_a_truncated_dump_is_refused_before_anything_changes(vps, project, scenario, tmp_path):
    """Starts from the restored rows, relB serving. The server reads the
    uploaded dump whole before its safety dump and the restore: a truncated
    one changes no row, takes no safety dump, and leaves no file behind that
    would count as a backup."""
    scenario.starts_after("restore")
    _, slug = project
    psql(vps, project, "UPDATE deploy_rows SET payload = 'after the backup' WHERE id <= 10;")
    before = psql(vps, project, TABLE_DIGEST)
    dump = scenario.dump.read_bytes()
    truncated = tmp_path / scenario.dump.name
    truncated.write_bytes(dump[: len(dump) // 2])
    listing = f"find /srv/{slug}/backups -type f"
    backups = set(vps.ssh("deploy", listing).stdout.split())

    result = script(vps, project, "restore", "--yes", "vps", str(truncated), check=False)
    assert result.returncode != 0
    assert reason(result).endswith(
        f"{truncated.name} is not a whole pg_dump custom-format archive (truncated or another format):"
        " nothing changed"
    ), result.stderr
    assert psql(vps, project, TABLE_DIGEST) == before
    assert set(vps.ssh("deploy", listing).stdout.split()) == backups, "no safety dump, no upload left"
    assert site_release(vps) == scenario.rel_b
