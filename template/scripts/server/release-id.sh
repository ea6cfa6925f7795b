# shellcheck shell=bash
# The one release-id rule, sourced by the laptop scripts (scripts/lib.sh) and
# by the server side (scripts/server.sh): a release is an image tag, so
# letters, digits, underscores, dots and dashes, at most 128 characters, not
# starting with a dot or a dash (Docker's own rule for tags).
valid_release() { [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; }
