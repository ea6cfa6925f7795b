# shellcheck shell=bash
# What every server command shares: progress output, the deployed project's
# place and its docker compose, .env values, releases.log, the deploy lock.
# Sourced by scripts/server.sh; defines functions only.

say() { printf '%s\n' "$*"; }
step() { printf -- '--> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf '%s: %s\n' "${COMMAND:-server.sh}" "$*" >&2
    exit 1
}
# A command line that cannot work: exit status 2, as for any Unix command.
usage_error() {
    printf '%s: %s\n' "${COMMAND:-server.sh}" "$*" >&2
    exit 2
}
indent() { sed -u 's/^/    /'; }
# The ERR trap's one-line reason: unexpected STATUS FILE:LINE COMMAND.
unexpected() { die "failed (exit status $1) at $2: $3"; }

# Run a command quietly; show its output only if it fails.
quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        printf '%s\n' "$output" | indent >&2
        return 1
    fi
}

# A positive whole number, for options such as --keep.
positive() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# --- The deployed project ---------------------------------------------------
# server.sh lives in /srv/<project>/scripts/: its parent is the project's
# directory, whose name is the project's (provision runs server.sh from a
# temporary copy and names the project instead).

project_dir() {
    # A deploy's staged copy of server.sh runs beside the project, which
    # DEPLOY_APP_DIR names (server/incoming.sh).
    APP_DIR=${DEPLOY_APP_DIR:-$(cd "$SERVER_HOME/.." && pwd)}
    PROJECT=$(basename "$APP_DIR")
    [ -f "$APP_DIR/.env" ] || die "$APP_DIR/.env is missing: run scripts/provision first"
    cd "$APP_DIR" || die "cannot enter $APP_DIR"
}

# Plain `docker compose` in the project directory: it reads .env there,
# including COMPOSE_FILE (compose.yaml, or compose.yaml:compose.tls.yaml for
# HTTPS), so that you can run the same commands by hand.
compose() { docker compose --project-name "$PROJECT" "$@"; }

env_value() { sed -n "s/^$1=//p" .env | tail -n 1; }
current_release() { env_value APP_RELEASE; }

set_current_release() {
    if grep -q '^APP_RELEASE=' .env; then
        sed -i "s/^APP_RELEASE=.*/APP_RELEASE=$1/" .env
    else
        printf '\n# The release that serves, kept up to date by scripts/deploy.\nAPP_RELEASE=%s\n' "$1" >>.env
    fi
}

# releases.log: one line per release that went live, tab-separated:
# time, deploy or rollback, release, where its image came from.
record_release() {
    printf '%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$3" >>releases.log
}

# Releases that went live, newest first, each once.
recent_releases() {
    [ -f releases.log ] || return 0
    tac releases.log | awk -F '\t' '!seen[$3]++ { print $3 }'
}

# The release that served before CURRENT: where a rollback goes. Rolling back
# twice returns to where you started.
previous_release() {
    recent_releases | grep -vxF -- "${1:-}" | head -n 1 || true
}

# Containers of one service on this server, by state (running, created,
# exited...): on a swarm, its tasks' containers on this node (swarm.sh).
containers() {
    local labels=(--filter "label=com.docker.compose.project=$PROJECT"
        --filter "label=com.docker.compose.service=$1" --filter "label=com.docker.compose.oneoff=False")
    ! swarm_mode || labels=(--filter "label=com.docker.swarm.service.name=${PROJECT}_$1")
    docker ps --all --quiet --no-trunc "${labels[@]}" ${2:+--filter "status=$2"}
}

# The compose configuration a running container was created from, and the
# one the compose files ask for now: they differ when a service changed.
config_hash() { docker inspect --format '{{index .Config.Labels "com.docker.compose.config-hash"}}' "$1"; }
wanted_config_hash() { compose config --hash "$1" | awk '{ print $2 }'; }

# One deploy, rollback or restore at a time. The lock is held until the
# command exits (file descriptor 9 stays open).
lock() {
    exec 9>"$APP_DIR/.deploy.lock"
    flock --nonblock 9 || die "another deploy, rollback or restore is running on this server"
}
