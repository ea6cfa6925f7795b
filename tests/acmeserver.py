"""Pebble, Let's Encrypt's ACME test server, beside a rendered project for
tests/test_tls.py: its compose overlay, its configuration (certificates due
for renewal RENEW_AFTER seconds after issuance), and a wait for the first
certificate.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path

import yaml

from tlsload import DOMAIN, TLSStack

PEBBLE = "ghcr.io/letsencrypt/pebble"
# A certificate is due RENEW_AFTER seconds after issuance: it lives the
# renewal threshold plus that, long enough for scripts/cert-expiry's 14 days.
RENEW_BEFORE_EXPIRY_DAYS = 30
RENEW_AFTER = 60
VALIDITY = RENEW_BEFORE_EXPIRY_DAYS * 86400 + RENEW_AFTER
RENEW_INTERVAL = 10


def pebble_overlay(project: Path) -> None:
    """Write the test-only compose file and Pebble's files into the project."""
    (project / "compose.pebble.yaml").write_text(
        yaml.safe_dump(
            {
                "services": {
                    "pebble": {
                        "image": PEBBLE,
                        "command": ["-config", "/pebble/config.json"],
                        # No random delays before validating, no nonces
                        # rejected at random: the test needs no retries.
                        "environment": {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
                        "volumes": ["./pebble:/pebble:ro"],
                        "ports": ["127.0.0.1:${PEBBLE_MANAGEMENT_PORT}:15000"],
                        "networks": ["acme"],
                    },
                    "certbot": {
                        "environment": {
                            "ACME_SERVER": "https://pebble:14000/dir",
                            "REQUESTS_CA_BUNDLE": "/pebble/minica.pem",
                        },
                        "volumes": ["./pebble:/pebble:ro"],
                        "depends_on": ["pebble"],
                    },
                    "nginx": {"environment": {"CERT_CHECK_INTERVAL": "1"}},
                    # nginx's networks are edge's (compose.yaml).
                    "edge": {"networks": {"acme": {"aliases": ["nginx", DOMAIN]}}},
                }
            },
            sort_keys=False,
        )
    )


def pebble_files(project: Path) -> None:
    """Pebble's own config, validating HTTP-01 on port 80, and the CA of its API's certificate."""
    target = project / "pebble"
    target.mkdir()
    container = subprocess.run(
        ["docker", "create", PEBBLE], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        for source, name in (
            ("/test/config/pebble-config.json", "image-config.json"),
            ("/test/certs/pebble.minica.pem", "minica.pem"),
        ):
            subprocess.run(
                ["docker", "cp", f"{container}:{source}", str(target / name)], check=True, capture_output=True
            )
    finally:
        subprocess.run(["docker", "rm", container], check=True, capture_output=True)
    config = json.loads((target / "image-config.json").read_text())
    settings = config["pebble"]
    settings["httpPort"] = 80
    settings["tlsPort"] = 443
    # Certificate lifetime: Pebble before 2.7 reads certificateValidityPeriod,
    # later ones only their profiles' validityPeriod. Each ignores the other's.
    settings["certificateValidityPeriod"] = VALIDITY
    profiles = settings.setdefault("profiles", {"default": {"description": "The default profile"}})
    for profile in profiles.values():
        profile["validityPeriod"] = VALIDITY
    for key in ("certificate", "privateKey"):
        settings[key] = "/" + settings[key].lstrip("/")
    (target / "config.json").write_text(json.dumps(config, indent=2))


def wait_for_issuance(tls: TLSStack, timeout: float = 150) -> None:
    """Until nginx serves a certificate that verifies against Pebble's root."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            tls.handshake().close()
            return
        except (ssl.SSLError, OSError) as error:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no certificate from Pebble after {timeout}s: {error}\n{tls.stack.logs()}"
                ) from None
        time.sleep(1)
