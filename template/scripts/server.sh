#!/usr/bin/env bash
# The server side of scripts/provision, deploy, rollback, backup, restore,
# logs and status. Those run on your laptop (or in CI) and call this file
# over SSH; scripts/deploy ships it to /srv/<project>/scripts/ with
# compose.yaml, and the daily backup timer runs it there too. Everything that
# changes the server is in this one file, so that you can read what happens.
#
#   server.sh provision --project NAME [OPTIONS]    as root: set the server up
#   server.sh deploy RELEASE [OPTIONS]              switch to an image already here
#   server.sh rollback [RELEASE]                    back to the previous release
#   server.sh backup | restore FILE | status | releases | compose ARGS...
set -Eeuo pipefail
# Any failure nobody expected still ends with a one-line reason.
trap 'status=$? && die "failed (exit status $status) at line $LINENO: $BASH_COMMAND"' ERR

COMMAND=${1:-help}
[ $# -eq 0 ] || shift
# Nothing this writes (releases.log, backups) is for other users to read.
umask 027

say() { printf '%s\n' "$*"; }
step() { printf -- '--> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf '%s: %s\n' "$COMMAND" "$*" >&2
    exit 1
}
indent() { sed -u 's/^/    /'; }

# Releases are image tags: letters, digits, dots, dashes and underscores.
valid_release() { [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; }

# --- The deployed project ---------------------------------------------------
# This file lives in /srv/<project>/scripts/; provision runs it from a
# temporary copy and names the project instead.

project_dir() {
    APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    PROJECT=$(basename "$APP_DIR")
    [ -f "$APP_DIR/.env" ] || die "$APP_DIR/.env is missing: run scripts/provision first"
    cd "$APP_DIR"
}

# Plain `docker compose` in the project directory: it reads .env there,
# including COMPOSE_FILE (compose.yaml, or compose.yaml:compose.tls.yaml for
# HTTPS), so that you can run the same commands by hand.
compose() { docker compose --project-name "$PROJECT" "$@"; }

# Run a command quietly; show its output only if it fails.
quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        printf '%s\n' "$output" | indent >&2
        return 1
    fi
}

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

# Containers of one service, by state (running, created, exited...).
containers() {
    docker ps --all --quiet --no-trunc \
        --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" \
        --filter "label=com.docker.compose.oneoff=False" \
        ${2:+--filter "status=$2"}
}

container_networks() {
    docker inspect --format '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "$1"
}

# How long nginx caches the app's addresses: `resolver ... valid=Ns` in its
# configuration. After that, it has asked Docker's DNS again.
nginx_resolve_seconds() {
    local valid
    valid=$( (cat nginx/templates/*.template 2>/dev/null || true) |
        sed -n 's/^[[:space:]]*resolver .*valid=\([0-9]*\)s.*/\1/p' | head -n 1)
    echo "${valid:-10}"
}

# Wait until every container given is healthy. Sets FAILURE when not.
wait_healthy() {
    local timeout=$1 start=$SECONDS container state health restarts pending
    shift
    while :; do
        pending=false
        for container in "$@"; do
            read -r state health restarts < <(docker inspect --format \
                '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' \
                "$container" 2>/dev/null || echo removed none 0)
            if [ "$restarts" != 0 ]; then
                FAILURE="it crashed and was restarted"
                return 1
            fi
            case $state/$health in
                running/healthy) ;;
                running/unhealthy) FAILURE="its healthcheck fails" && return 1 ;;
                # No healthcheck in the image: running for 5 seconds will do.
                running/none) [ $((SECONDS - start)) -ge 5 ] || pending=true ;;
                running/* | created/*) pending=true ;;
                *)
                    FAILURE="its container stopped ($state, exit code $(docker inspect --format '{{.State.ExitCode}}' "$container" 2>/dev/null || echo unknown))"
                    return 1
                    ;;
            esac
        done
        $pending || return 0
        if [ $((SECONDS - start)) -ge "$timeout" ]; then
            FAILURE="still not healthy after ${timeout}s"
            return 1
        fi
        sleep 1
    done
}

# --- deploy -------------------------------------------------------------------

usage_deploy() {
    cat <<'EOF'
server.sh deploy RELEASE [--source TEXT] [--keep N] [--health-timeout SECONDS]
server.sh rollback [RELEASE] [--keep N] [--health-timeout SECONDS]

Switch the stack to the image <project>:RELEASE, which must be on the server.
EOF
}

cmd_deploy() {
    local release="" action=deploy source=uploaded keep=${KEEP_RELEASES:-5} timeout=180
    while [ $# -gt 0 ]; do
        case $1 in
            --rollback) action=rollback ;;
            --source) source=$2 && shift ;;
            --keep) keep=$2 && shift ;;
            --health-timeout) timeout=$2 && shift ;;
            -h | --help) usage_deploy && exit 0 ;;
            -*) die "unknown option $1" ;;
            *) release=$1 ;;
        esac
        shift
    done
    project_dir
    valid_release "$release" || die "not a release id: '$release'"
    [[ $keep =~ ^[1-9][0-9]*$ ]] || die "--keep needs a number of releases, at least 1"
    [[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--health-timeout needs a number of seconds"
    lock

    local image=$PROJECT:$release current
    current=$(current_release)
    docker image inspect "$image" >/dev/null 2>&1 || die "image $image is not on this server"
    export APP_RELEASE=$release

    check_database_unchanged

    # Leftovers of an interrupted deploy: never started, or stopped.
    local leftover
    for leftover in $(containers app created) $(containers app exited); do
        docker rm --force "$leftover" >/dev/null
    done

    if [ -z "$(containers app running)" ]; then
        step "starting the stack with release $release (no app container was running)"
        quietly compose up --detach --wait --wait-timeout "$timeout" --no-build ||
            die "the stack did not start healthy with release $release (see above, and scripts/logs)"
        compose ps --format '{{.Service}}: {{.Status}}' | indent
        set_current_release "$release"
        record_release "$action" "$release" "$source"
    else
        [ "$action" = rollback ] || release_step "$release" "$current"
        switch "$release" "$current" "$timeout" "$action" "$source"
    fi
    refresh_nginx
    check_nginx_serves "$release"
    prune_images "$keep"
}

lock() {
    exec 9>"$APP_DIR/.deploy.lock"
    flock --nonblock 9 || die "another deploy, rollback or restore is running on this server"
}

# Deploys never restart the database: that would cut every request off, and a
# new PostgreSQL major version cannot open the old one's data at all.
check_database_unchanged() {
    local running wanted
    running=$(containers db running | head -n 1)
    [ -n "$running" ] || return 0
    running=$(docker inspect --format '{{index .Config.Labels "com.docker.compose.config-hash"}}' "$running")
    wanted=$(compose config --hash db | awk '{ print $2 }')
    [ "$running" = "$wanted" ] || die "the compose files change the db service, and deploy never restarts the database: apply that on the server first (docker compose up -d db, a short outage; a new PostgreSQL major version: scripts/upgrade-postgres), then deploy again"
}

# Migrations and static files, once, before any container of the new release
# serves. The old release keeps serving meanwhile, so migrations must keep
# the schema usable by the old code (add now, remove in a later release).
release_step() {
    local release=$1 current=$2 container code
    step "release step (the migrate service): migrations, then static files"
    quietly compose up --detach --no-build migrate ||
        die "could not start the release step of $release; $current keeps serving"
    container=$(containers migrate | head -n 1)
    code=$(docker wait "$container")
    # This run's output only: the container is reused when nothing changed.
    docker logs --since "$(docker inspect --format '{{.State.StartedAt}}' "$container")" "$container" 2>&1 | indent
    [ "$code" = 0 ] || die "the release step of $release failed (exit code $code); $current keeps serving"
}

# Zero-downtime switch. nginx sends requests to every address Docker's DNS
# gives for `app` on the networks they share, and asks again every few
# seconds. So: the new containers start beside the old ones but outside those
# networks, join them only once healthy, and the old ones stop only after
# nginx has seen the new addresses. Gunicorn then finishes the requests in
# flight (graceful_timeout) before the container's stop_grace_period ends;
# nginx retries a request that finds an old container gone on another one.
switch() {
    local release=$1 current=$2 timeout=$3 action=$4 source=$5
    local old new container network wait proxy_networks=() aliases
    mapfile -t old < <(containers app running)

    step "starting ${#old[@]} app container(s) of $release beside ${current:-the running ones}"
    quietly compose up --no-start --no-recreate --no-build --scale "app=$((2 * ${#old[@]}))" app ||
        die "could not create the containers of $release; ${current:-the old release} keeps serving"
    mapfile -t new < <(containers app created)
    [ ${#new[@]} -gt 0 ] || die "docker compose created no new app container"

    # Keep them off the networks nginx uses until they are healthy.
    local nginx
    nginx=$(containers nginx running | head -n 1)
    for network in $(container_networks "${new[0]}"); do
        if [ -n "$nginx" ] && [[ " $(container_networks "$nginx") " == *" $network "* ]]; then
            proxy_networks+=("$network")
        fi
    done
    for container in "${new[@]}"; do
        for network in "${proxy_networks[@]}"; do
            docker network disconnect "$network" "$container"
        done
        docker start "$container" >/dev/null
    done

    step "waiting for $release to turn healthy (up to ${timeout}s), off nginx"
    local started=$SECONDS
    if ! wait_healthy "$timeout" "${new[@]}"; then
        say "    last lines of its log:"
        docker logs --tail 15 "${new[0]}" 2>&1 | indent | indent
        docker rm --force "${new[@]}" >/dev/null
        die "release $release never turned healthy ($FAILURE); it got no traffic, and ${current:-the old release} keeps serving"
    fi
    say "    healthy after $((SECONDS - started))s"

    step "$release joins nginx's upstream"
    for container in "${new[@]}"; do
        # The aliases compose gives: the service name and the container name.
        aliases=(--alias app --alias "$(docker inspect --format '{{.Name}}' "$container" | tr -d /)")
        for network in "${proxy_networks[@]}"; do
            docker network connect "${aliases[@]}" "$network" "$container"
        done
    done
    set_current_release "$release"
    record_release "$action" "$release" "$source"

    wait=$(($(nginx_resolve_seconds) + 2))
    step "waiting ${wait}s for nginx to resolve app again and send requests to $release"
    sleep "$wait"

    step "draining ${current:-the old release}: requests in flight finish, then its containers stop"
    docker stop "${old[@]}" >/dev/null
    docker rm "${old[@]}" >/dev/null
}

# nginx keeps the old addresses until it resolves app again. A request sent
# to one now waits for proxy_connect_timeout before nginx tries the new
# release and stops using the old address: better one of ours than a
# visitor's. /healthz answers over plain http even with HTTPS on.
check_nginx_serves() {
    local release=$1 port answers=0 deadline=$((SECONDS + 60)) answer
    step "checking that nginx serves $release"
    port=$(env_value HTTP_PORT)
    while [ "$answers" -lt 5 ]; do
        answer=$(curl --silent --max-time 10 --header 'Host: localhost' "http://127.0.0.1:${port:-80}/healthz" || true)
        if [[ ${answer//[[:space:]]/} == *"\"release\":\"$release\""* ]]; then
            answers=$((answers + 1))
        else
            answers=0
            [ "$SECONDS" -lt "$deadline" ] ||
                die "$release is live, but nginx does not serve it on /healthz (last answer: ${answer:-none}); see scripts/status"
            sleep 1
        fi
    done
}

# nginx's container is recreated (or restarted) only when its configuration
# changed: a second or so of refused connections, hence not on every deploy.
refresh_nginx() {
    local container sum
    container=$(containers nginx running | head -n 1)
    sum=$( (find nginx -type f -print0 2>/dev/null || true) | sort -z | xargs -0 cat | sha256sum | cut -c1-64)
    if [ -z "$container" ]; then
        step "nginx is not running: starting it"
        quietly compose up --detach --wait --no-build nginx || die "nginx did not start healthy: see scripts/logs"
    elif [ "$(docker inspect --format '{{index .Config.Labels "com.docker.compose.config-hash"}}' "$container")" != \
        "$(compose config --hash nginx | awk '{ print $2 }')" ]; then
        step "compose.yaml changed nginx: recreating it"
        quietly compose up --detach --wait --no-build nginx || die "nginx did not come back healthy: see scripts/logs"
    elif [ -f .nginx.sum ] && [ "$(cat .nginx.sum)" != "$sum" ]; then
        step "nginx's configuration changed: restarting nginx"
        quietly compose restart nginx || die "nginx did not restart: see scripts/logs"
    fi
    echo "$sum" >.nginx.sum
}

# Keep the images of the last N releases that went live (for rollback) and
# the current one; remove every other <project>:* image.
prune_images() {
    local keep=$1 tag kept=() removed=0 container
    mapfile -t kept < <({ current_release; recent_releases; } | awk 'NF && !seen[$0]++' | head -n "$keep")
    # The migrate container of another release (a rollback skips the release
    # step, a failed deploy leaves its own) would pin that release's image:
    # recreate it for the current release, without running it. (Not removed:
    # docker compose down fails when a dependency's container is missing.)
    for container in $(containers migrate exited); do
        if [ "$(docker inspect --format '{{.Config.Image}}' "$container")" != "$PROJECT:$(current_release)" ]; then
            APP_RELEASE=$(current_release) quietly compose up --no-start --no-build migrate
        fi
    done
    for tag in $(docker image ls "$PROJECT" --format '{{.Tag}}'); do
        [[ " ${kept[*]} " == *" $tag "* ]] && continue
        if docker image rm "$PROJECT:$tag" >/dev/null 2>&1; then
            removed=$((removed + 1))
        fi
    done
    docker image prune --force >/dev/null
    step "kept the images of ${#kept[@]} release(s) for rollback (${kept[*]}), removed $removed"
}

cmd_rollback() {
    local target="" args=()
    while [ $# -gt 0 ]; do
        case $1 in
            --keep | --health-timeout) args+=("$1" "$2") && shift ;;
            -h | --help) usage_deploy && exit 0 ;;
            -*) die "unknown option $1" ;;
            *) target=$1 ;;
        esac
        shift
    done
    project_dir
    local current
    current=$(current_release)
    if [ -z "$target" ]; then
        # The release that served before the current one. Rolling back twice
        # returns to where you started.
        target=$(recent_releases | grep -vxF -- "${current:-}" | head -n 1 || true)
        [ -n "$target" ] || die "no earlier release in $APP_DIR/releases.log to roll back to"
    fi
    [ "$target" != "$current" ] || die "$target is already the current release"
    docker image inspect "$PROJECT:$target" >/dev/null 2>&1 ||
        die "the image of $target is no longer on the server (deploy keeps the last few only); deploy it again instead"
    step "rolling back from $current to $target (no migrations: the schema stays as it is)"
    cmd_deploy "$target" --rollback --source rollback "${args[@]}"
}

cmd_releases() {
    project_dir
    [ -f releases.log ] || die "no release has been deployed yet"
    cat releases.log
}

# Images compose.yaml needs that are not on the server, the app's aside.
cmd_missing_images() {
    project_dir
    local image
    for image in $(compose config --images); do
        [[ $image == "$PROJECT:"* ]] && continue
        docker image inspect "$image" >/dev/null 2>&1 || echo "$image"
    done
}

# Name an image the way compose.yaml does, <project>:RELEASE.
cmd_tag() {
    project_dir
    local image=$1 release=$2
    valid_release "$release" || die "not a release id: '$release'"
    if [ "$image" != "$PROJECT:$release" ]; then
        docker tag "$image" "$PROJECT:$release"
        docker image rm "$image" >/dev/null
    fi
}

cmd_pull() {
    project_dir
    local image=$1 release=$2
    valid_release "$release" || die "not a release id: '$release'"
    step "pulling $image on the server"
    docker pull --quiet "$image" | indent || die "could not pull $image (private image: log the server in with docker login)"
    cmd_tag "$image" "$release"
}

# --- backup and restore -------------------------------------------------------

# pg_dump in its custom format: compressed, and pg_restore can pick from it.
# Keeps the newest BACKUP_KEEP dumps (14 by default) in backups/.
cmd_backup() {
    local label="" keep=${BACKUP_KEEP:-14}
    [ "${1:-}" != "--label" ] || label=-$2
    project_dir
    [ -n "$(containers db running)" ] || die "the database is not running"
    umask 077
    mkdir -p backups
    local file
    file=backups/$PROJECT-$(date -u +%Y%m%dT%H%M%SZ)$label.dump
    # shellcheck disable=SC2016 # expanded in the container
    if ! compose exec -T db sh -c 'pg_dump --format=custom --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"' >"$file.partial"; then
        rm -f "$file.partial"
        die "pg_dump failed"
    fi
    mv "$file.partial" "$file"
    find backups -maxdepth 1 -name "$PROJECT-*.dump" -printf '%f\n' | sort -r | tail -n "+$((keep + 1))" |
        while read -r old; do rm -f "backups/$old"; done
    step "backup $APP_DIR/$file ($(du -h "$file" | cut -f1))"
    echo "$APP_DIR/$file"
}

# Replace the database's contents with a dump, in one transaction: if any of
# it fails, nothing changes. Requests wait while it runs.
cmd_restore() {
    local file=${1:-}
    project_dir
    [ -n "$file" ] || die "name the dump to restore"
    [[ $file == /* ]] || file=$APP_DIR/backups/$file
    [ -f "$file" ] || die "no such dump on the server: $file"
    lock
    step "safety backup of the current data first"
    cmd_backup --label pre-restore | indent
    step "restoring $(basename "$file") into database $(env_value POSTGRES_DB)"
    # shellcheck disable=SC2016 # expanded in the container
    compose exec -T -e PGOPTIONS='-c lock_timeout=60s' db sh -c \
        'pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"' \
        <"$file" 2>&1 | indent || die "pg_restore failed: the database is unchanged"
    step "restored $(basename "$file")"
}

# --- status ---------------------------------------------------------------------

cmd_status() {
    project_dir
    local current problems=() service container line health
    current=$(current_release)
    say "project   $PROJECT in $APP_DIR"
    say "release   ${current:-none} ($(awk -F '\t' -v r="$current" '$3 == r { t = $1 " by " $2 } END { print t ? "went live " t : "not in releases.log" }' releases.log 2>/dev/null || echo "no releases.log"))"
    for service in $(compose config --services); do
        [ "$service" != migrate ] || continue
        line=""
        for container in $(containers "$service" running); do
            health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}' "$container")
            line+="$health "
            [ "$health" = healthy ] || [ "$health" = running ] || problems+=("$service is $health")
        done
        [ -n "$line" ] || {
            line="not running "
            problems+=("$service is not running")
        }
        printf '%-9s %s\n' "$service" "${line% }"
    done
    # What nginx serves, asked on the server the way a visitor would.
    local port answer
    port=$(env_value HTTP_PORT)
    if answer=$(curl --silent --show-error --max-time 5 --header 'Host: localhost' "http://127.0.0.1:${port:-80}/healthz" 2>&1); then
        say "serving   $answer (GET /healthz through nginx)"
        [[ ${answer//[[:space:]]/} == *"\"release\":\"$current\""* ]] ||
            problems+=("nginx serves another release than $current")
    else
        say "serving   nothing: $answer"
        problems+=("/healthz does not answer through nginx")
    fi
    local previous
    previous=$(recent_releases | grep -vxF -- "${current:-}" | head -n 1 || true)
    say "rollback  ${previous:-no earlier release}"
    local newest
    newest=$( (find backups -maxdepth 1 -name '*.dump' -printf '%f\n' 2>/dev/null || true) | sort)
    say "backups   $(grep -c . <<<"$newest" || true), newest: $(tail -n 1 <<<"${newest:-none}")"
    say "disk      $(df -h --output=avail "$APP_DIR" | tail -n 1 | tr -d ' ') free"
    if [ ${#problems[@]} -gt 0 ]; then
        local IFS=';'
        local joined="${problems[*]}"
        die "${joined//;/; }"
    fi
}

# --- provision ----------------------------------------------------------------
# Idempotent: each step checks before it changes anything, and says "ok" or
# "changed". A second run changes nothing.

CHANGES=0
changed() {
    CHANGES=$((CHANGES + 1))
    printf '    changed  %s\n' "$*"
}
unchanged() { printf '    ok       %s\n' "$*"; }

# put_file PATH MODE OWNER < CONTENT: write PATH when its content differs.
# Returns 0 when it wrote the file.
put_file() {
    local path=$1 mode=$2 owner=$3 new
    new=$(mktemp)
    cat >"$new"
    if [ -f "$path" ] && cmp -s "$new" "$path"; then
        rm -f "$new"
        if [ "$(stat -c '%a %U:%G' "$path")" != "$mode $owner" ]; then
            chmod "$mode" "$path" && chown "$owner" "$path"
            return 0
        fi
        return 1
    fi
    install -D -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$new" "$path"
    rm -f "$new"
}

APT_UPDATED=false
apt_install() {
    if ! $APT_UPDATED; then
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        APT_UPDATED=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "$@" >/dev/null
}

installed() { [ "$(dpkg-query --show --showformat '${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }

ensure_packages() {
    local missing=() package
    for package in "$@"; do
        installed "$package" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
        changed "installed ${missing[*]}"
    else
        unchanged "packages: $*"
    fi
}

has_candidate() {
    $APT_UPDATED || { apt-get -o DPkg::Lock::Timeout=300 update -qq && APT_UPDATED=true; }
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

usage_provision() {
    cat <<'EOF'
server.sh provision --project NAME --domain NAME [--user NAME] [--engine auto|docker|distro]
                    [--swap SIZE] [--env-file FILE] [--key-file FILE]
Run as root. scripts/provision calls it; see scripts/provision --help.
EOF
}

cmd_provision() {
    local project="" domain="" user=deploy engine=auto swap=2G env_file="" key_files=()
    while [ $# -gt 0 ]; do
        case $1 in
            --project) project=$2 && shift ;;
            --domain) domain=$2 && shift ;;
            --user) user=$2 && shift ;;
            --engine) engine=$2 && shift ;;
            --swap) swap=$2 && shift ;;
            --env-file) env_file=$2 && shift ;;
            --key-file) key_files+=("$2") && shift ;;
            -h | --help) usage_provision && exit 0 ;;
            *) die "unknown argument $1" ;;
        esac
        shift
    done
    [ "$(id -u)" = 0 ] || die "provision must run as root"
    [[ $project =~ ^[a-z][a-z0-9_]*$ ]] || die "--project needs the project's slug"
    [[ $user =~ ^[a-z_][a-z0-9_-]*$ ]] || die "not a user name: $user"
    case $engine in auto | docker | distro) ;; *) die "--engine is auto, docker or distro" ;; esac
    # shellcheck source=/dev/null
    . /etc/os-release
    case ${ID:-} in debian | ubuntu) ;; *) die "this is ${PRETTY_NAME:-an unknown system}: provision supports Debian and Ubuntu" ;; esac
    local app_dir=/srv/$project

    step "packages"
    # curl: the status check; python3-systemd: fail2ban's systemd backend.
    ensure_packages ca-certificates curl ufw fail2ban python3-systemd unattended-upgrades

    step "Docker engine"
    provision_docker "$engine"

    step "deploy user"
    provision_user "$user" "${key_files[@]}"

    step "SSH"
    provision_sshd

    step "firewall"
    provision_firewall

    step "fail2ban"
    provision_fail2ban

    step "automatic security updates"
    if put_file /etc/apt/apt.conf.d/20auto-upgrades 644 root:root <<'EOF'; then
// Written by scripts/provision: refresh the package lists and install
// security updates (unattended-upgrades' default origins) every day.
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
EOF
        changed "/etc/apt/apt.conf.d/20auto-upgrades"
    else
        unchanged "unattended-upgrades runs daily"
    fi

    step "swap"
    provision_swap "$swap"

    step "$app_dir"
    provision_app_dir "$project" "$domain" "$user" "$app_dir" "$env_file"

    step "daily backup"
    provision_backup_timer "$project" "$user" "$app_dir"

    step "provision: $CHANGES changed"
}

# Docker's own apt repository (docker-ce, docker-compose-plugin) is what
# Docker documents and ships the newest engine and Compose. Debian 13 and
# Ubuntu also package both (docker.io, docker-compose / docker-compose-v2),
# updated by the distribution's security team: used when Docker's repository
# is unreachable (--engine auto), or on request (--engine distro).
provision_docker() {
    local engine=$1
    # Written before the engine is installed, so that it starts with it.
    # Logs rotate (json-file keeps 5 x 10 MB per container); live-restore
    # keeps containers running while the engine itself restarts or upgrades.
    if put_file /etc/docker/daemon.json 644 root:root <<'EOF'; then
{
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "5" },
  "live-restore": true
}
EOF
        changed "/etc/docker/daemon.json: log rotation, live-restore"
        if systemctl is-active --quiet docker; then
            systemctl restart docker
            changed "restarted the Docker engine for its new settings"
        fi
    else
        unchanged "/etc/docker/daemon.json: log rotation, live-restore"
    fi

    if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
        unchanged "Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '(engine not answering)'), Compose $(docker compose version --short)"
    else
        if [ "$engine" = auto ]; then
            if curl --silent --fail --max-time 15 --output /dev/null \
                "https://download.docker.com/linux/$ID/dists/$VERSION_CODENAME/Release"; then
                engine=docker
            else
                engine=distro
                say "    Docker's apt repository has nothing for $ID $VERSION_CODENAME here (or is unreachable): using $ID's own packages"
            fi
        fi
        if [ "$engine" = docker ]; then
            install -d -m 755 /etc/apt/keyrings
            curl --silent --show-error --fail --max-time 60 --output /etc/apt/keyrings/docker.asc \
                "https://download.docker.com/linux/$ID/gpg" || die "could not download Docker's signing key"
            chmod a+r /etc/apt/keyrings/docker.asc
            put_file /etc/apt/sources.list.d/docker.sources 644 root:root <<EOF || true
Types: deb
URIs: https://download.docker.com/linux/$ID
Suites: $VERSION_CODENAME
Components: stable
Signed-By: /etc/apt/keyrings/docker.asc
EOF
            APT_UPDATED=false
            apt_install docker-ce docker-ce-cli containerd.io docker-compose-plugin
            changed "installed docker-ce and docker-compose-plugin from download.docker.com"
        else
            local packages=(docker.io)
            has_candidate docker-cli && packages+=(docker-cli)
            if has_candidate docker-compose-v2; then
                packages+=(docker-compose-v2)
            elif [[ $(apt-cache policy docker-compose | sed -n 's/^ *Candidate: //p') == [2-9]* ]]; then
                packages+=(docker-compose)
            else
                die "$PRETTY_NAME has no Compose v2 package: use --engine docker"
            fi
            apt_install "${packages[@]}"
            changed "installed ${packages[*]} from $ID's archive"
        fi
    fi
    if ! systemctl is-enabled --quiet docker || ! systemctl is-active --quiet docker; then
        systemctl enable --now docker >/dev/null 2>&1
        changed "Docker engine enabled and started"
    fi
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer: journalctl -u docker"
}

provision_user() {
    local user=$1 keys home
    shift
    if ! id "$user" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash --user-group "$user"
        # No password at all ('*', not a locked '!'): SSH keys only.
        usermod --password '*' "$user"
        changed "user $user"
    else
        unchanged "user $user"
    fi
    if [[ " $(id -nG "$user") " == *" docker "* ]]; then
        unchanged "$user is in the docker group (root-equivalent: it runs the stack)"
    else
        usermod --append --groups docker "$user"
        changed "$user added to the docker group"
    fi

    # Keys: those that log the admin in (root's, or the sudo user's), and any
    # given. Keys are only ever added, never removed: CI's key stays.
    home=$(getent passwd "$user" | cut -d: -f6)
    local admin_home
    admin_home=$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)
    keys=$(cat "$admin_home/.ssh/authorized_keys" "$@" 2>/dev/null | grep -E '^(ssh-|ecdsa-|sk-)' || true)
    install -d -m 700 -o "$user" -g "$user" "$home/.ssh"
    touch "$home/.ssh/authorized_keys"
    local added=0 key
    while IFS= read -r key; do
        [ -n "$key" ] || continue
        grep -qxF -- "$key" "$home/.ssh/authorized_keys" && continue
        printf '%s\n' "$key" >>"$home/.ssh/authorized_keys"
        added=$((added + 1))
    done <<<"$keys"
    chown "$user:$user" "$home/.ssh/authorized_keys"
    chmod 600 "$home/.ssh/authorized_keys"
    [ -s "$home/.ssh/authorized_keys" ] || die "no SSH key would let $user log in: pass --ssh-key FILE"
    if [ "$added" -gt 0 ]; then
        changed "$added SSH key(s) allowed for $user"
    else
        unchanged "SSH keys of $user"
    fi
}

provision_sshd() {
    local dropin=/etc/ssh/sshd_config.d/10-hardening.conf backup
    grep -qE '^Include /etc/ssh/sshd_config.d/\*.conf' /etc/ssh/sshd_config ||
        die "/etc/ssh/sshd_config does not include sshd_config.d/*.conf: too old an OpenSSH setup"
    backup=$(mktemp)
    cp -p "$dropin" "$backup" 2>/dev/null || rm -f "$backup"
    # The first value sshd reads wins: 10- comes before the 50-cloud-init.conf
    # that some images ship with PasswordAuthentication yes.
    if put_file "$dropin" 644 root:root <<'EOF'; then
# Written by scripts/provision. Keys only: no passwords, ever.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PubkeyAuthentication yes
# root may still log in with a key, to run scripts/provision again. Set this
# to "no" once you have a sudo user of your own.
PermitRootLogin prohibit-password
MaxAuthTries 3
LoginGraceTime 30
X11Forwarding no
AllowAgentForwarding no
EOF
        if ! sshd -t 2>&1 | indent; then
            if [ -f "$backup" ]; then mv "$backup" "$dropin"; else rm -f "$dropin"; fi
            die "sshd -t rejects the new settings: put the old ones back, nothing reloaded"
        fi
        systemctl reload ssh 2>/dev/null || systemctl reload sshd
        changed "$dropin (checked with sshd -t, sshd reloaded)"
    else
        unchanged "$dropin: keys only"
    fi
    rm -f "$backup"
    sshd -T 2>/dev/null | grep -x 'passwordauthentication no' >/dev/null ||
        warn "sshd still accepts passwords: another file in /etc/ssh/sshd_config.d/ sets it first"
}

# ufw lets in SSH, HTTP and HTTPS only. Docker's published ports do not go
# through ufw's INPUT rules at all (Docker forwards them itself), so a
# DOCKER-USER chain, which Docker consults first, drops any connection from
# outside to a container unless it came in on port 80 or 443: whatever a
# compose file publishes by mistake (the database, say) stays unreachable.
provision_firewall() {
    local ports port status rules_changed=false listed
    ports=$( { echo 80; echo 443; sshd -T 2>/dev/null | awk '$1 == "port" { print $2 }'; } | sort -un)
    listed=$(paste -sd ' ' <<<"$ports")
    listed=${listed// /, }
    if put_docker_user_rules; then
        changed "DOCKER-USER rules in /etc/ufw/after.rules"
        rules_changed=true
    else
        unchanged "DOCKER-USER rules in /etc/ufw/after.rules: containers get ports 80 and 443 only"
    fi
    status=$(ufw status verbose)
    local wanted=true
    grep -q '^Status: active' <<<"$status" || wanted=false
    grep -q 'Default: deny (incoming), allow (outgoing)' <<<"$status" || wanted=false
    for port in $ports; do
        grep -qE "^$port/tcp +ALLOW IN +Anywhere" <<<"$status" || wanted=false
    done
    if $wanted; then
        unchanged "ufw active: incoming $listed only"
        if $rules_changed; then
            ufw reload >/dev/null
        fi
    else
        ufw default deny incoming >/dev/null
        ufw default allow outgoing >/dev/null
        for port in $ports; do
            ufw allow "$port/tcp" >/dev/null
        done
        ufw --force enable >/dev/null
        changed "ufw active: incoming $listed only"
    fi
}

put_docker_user_rules() {
    local file=/etc/ufw/after.rules begin='# BEGIN provision: Docker published ports'
    local end='# END provision: Docker published ports' block current
    block="$begin
*filter
:DOCKER-USER - [0:0]
-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A DOCKER-USER -i docker0 -j RETURN
-A DOCKER-USER -i br-+ -j RETURN
-A DOCKER-USER -p tcp -m conntrack --ctorigdstport 80 -j RETURN
-A DOCKER-USER -p tcp -m conntrack --ctorigdstport 443 -j RETURN
-A DOCKER-USER -o docker0 -j DROP
-A DOCKER-USER -o br-+ -j DROP
COMMIT
$end"
    current=$(sed -n "/^$begin\$/,/^$end\$/p" "$file")
    [ "$current" != "$block" ] || return 1
    { sed "/^$begin\$/,/^$end\$/d" "$file"; printf '%s\n' "$block"; } >"$file.new"
    chmod 640 "$file.new"
    mv "$file.new" "$file"
}

provision_fail2ban() {
    if put_file /etc/fail2ban/jail.d/sshd.local 644 root:root <<'EOF'; then
# Written by scripts/provision: ban an address for an hour after 5 failed
# SSH logins within 10 minutes. sshd logs to the journal (backend systemd);
# bans are iptables rules, the tool Docker and ufw already use.
[DEFAULT]
banaction = iptables-multiport
banaction_allports = iptables-allports

[sshd]
enabled = true
backend = systemd
journalmatch = _SYSTEMD_UNIT=ssh.service + _SYSTEMD_UNIT=sshd.service + _COMM=sshd + _COMM=sshd-session
maxretry = 5
findtime = 10m
bantime = 1h
EOF
        systemctl enable fail2ban >/dev/null 2>&1
        systemctl restart fail2ban
        changed "/etc/fail2ban/jail.d/sshd.local"
    else
        unchanged "fail2ban guards sshd (systemd backend)"
    fi
    if ! systemctl is-active --quiet fail2ban; then
        systemctl enable --now fail2ban >/dev/null 2>&1
        changed "fail2ban started"
    fi
    local _
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        fail2ban-client status sshd >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "fail2ban's sshd jail is not running: journalctl -u fail2ban"
}

provision_swap() {
    local size=$1
    if systemd-detect-virt --container --quiet; then
        # Swap and vm.* settings belong to the host's kernel, not to this.
        unchanged "swap: left alone (this is a container, on its host's memory)"
        return 0
    fi
    if [ -n "$(swapon --show --noheadings)" ]; then
        unchanged "swap: $(swapon --show=NAME,SIZE --noheadings | tr -s ' ' | paste -sd ',')"
    elif [ "$size" = 0 ]; then
        unchanged "swap: none (--swap 0)"
    else
        if [ ! -f /swapfile ]; then
            fallocate -l "$size" /swapfile
            chmod 600 /swapfile
            mkswap /swapfile >/dev/null
        fi
        swapon /swapfile
        grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' >>/etc/fstab
        changed "swap: /swapfile, $size"
    fi
    # Swap is the safety net for a memory spike, not working memory.
    if put_file /etc/sysctl.d/60-swappiness.conf 644 root:root <<<'vm.swappiness = 10'; then
        sysctl --quiet --load /etc/sysctl.d/60-swappiness.conf
        changed "vm.swappiness = 10"
    fi
}

provision_app_dir() {
    local project=$1 domain=$2 user=$3 app_dir=$4 env_file=$5
    if [ "$(stat -c '%a %U' "$app_dir" 2>/dev/null || true)" != "750 $user" ]; then
        install -d -m 750 -o "$user" -g "$user" "$app_dir"
        changed "$app_dir, owned by $user"
    else
        unchanged "$app_dir, owned by $user"
    fi
    install -d -m 755 -o "$user" -g "$user" "$app_dir/scripts"
    install -d -m 700 -o "$user" -g "$user" "$app_dir/backups"

    local env=$app_dir/.env
    if [ -n "$env_file" ]; then
        # The uploaded .env replaces the server's, but the release that
        # serves stays recorded in it.
        local release
        release=$( (sed -n 's/^APP_RELEASE=//p' "$env" 2>/dev/null || true) | tail -n 1)
        if [ -n "$release" ] && ! grep -q '^APP_RELEASE=' "$env_file"; then
            printf '\n# The release that serves, kept up to date by scripts/deploy.\nAPP_RELEASE=%s\n' "$release" >>"$env_file"
        fi
        if put_file "$env" 600 "$user:$user" <"$env_file"; then
            changed "$env uploaded"
        else
            unchanged "$env (same as the uploaded one)"
        fi
    elif [ ! -f "$env" ]; then
        put_file "$env" 600 "$user:$user" <<EOF
# Production settings of $project, generated on this server by
# scripts/provision. .env.example in the repository explains each variable.
SECRET_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

POSTGRES_USER=$project
POSTGRES_PASSWORD=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
POSTGRES_DB=$project

SERVER_NAMES=$domain localhost
HTTP_PORT=80
EOF
        changed "$env generated, with new secrets"
    elif [ "$(stat -c '%a %U:%G' "$env")" != "600 $user:$user" ]; then
        chmod 600 "$env" && chown "$user:$user" "$env"
        changed "$env: mode 600, owned by $user"
    else
        unchanged "$env (mode 600)"
    fi

    if put_file "$app_dir/scripts/server.sh" 755 "$user:$user" <"${BASH_SOURCE[0]}"; then
        changed "$app_dir/scripts/server.sh"
    else
        unchanged "$app_dir/scripts/server.sh"
    fi
}

provision_backup_timer() {
    local project=$1 user=$2 app_dir=$3 unit=$1-backup units_changed=false
    if put_file "/etc/systemd/system/$unit.service" 644 root:root <<EOF; then
[Unit]
Description=Back up the $project database (pg_dump into $app_dir/backups)
After=docker.service
Requires=docker.service

[Service]
Type=oneshot
User=$user
# How many dumps to keep in $app_dir/backups.
Environment=BACKUP_KEEP=14
ExecStart=$app_dir/scripts/server.sh backup
EOF
        units_changed=true
    fi
    if put_file "/etc/systemd/system/$unit.timer" 644 root:root <<EOF; then
[Unit]
Description=Daily backup of the $project database

[Timer]
OnCalendar=*-*-* 03:00:00
RandomizedDelaySec=30m
# Catch up on a backup missed while the server was off.
Persistent=true

[Install]
WantedBy=timers.target
EOF
        units_changed=true
    fi
    if $units_changed; then
        systemctl daemon-reload
        changed "$unit.service and $unit.timer"
    fi
    if systemctl is-enabled --quiet "$unit.timer" && systemctl is-active --quiet "$unit.timer"; then
        unchanged "$unit.timer: daily, keeps 14 dumps"
    else
        systemctl enable --now "$unit.timer" >/dev/null 2>&1
        changed "$unit.timer enabled"
    fi
}

# --- main -----------------------------------------------------------------------

case $COMMAND in
    provision) cmd_provision "$@" ;;
    deploy) cmd_deploy "$@" ;;
    rollback) cmd_rollback "$@" ;;
    releases) cmd_releases ;;
    missing-images) cmd_missing_images ;;
    tag) cmd_tag "$@" ;;
    pull) cmd_pull "$@" ;;
    backup) cmd_backup "$@" ;;
    restore) cmd_restore "$@" ;;
    status) cmd_status ;;
    compose)
        project_dir
        compose "$@"
        ;;
    help | -h | --help)
        cat <<'EOF'
Usage: server.sh COMMAND [ARG...]

The server side of the deploy scripts: they run it over SSH as
/srv/<project>/scripts/server.sh. You can run it there too.

  provision --project NAME ...  as root: set the server up (scripts/provision)
  deploy RELEASE [OPTIONS]      switch to the image <project>:RELEASE, already here
  rollback [RELEASE]            back to the previous release (or RELEASE)
  releases                      the releases that went live (releases.log)
  backup                        pg_dump into backups/, keeping BACKUP_KEEP (14)
  restore FILE                  pg_restore FILE (in backups/) into the database
  status                        release, health, what nginx serves
  compose ARGS...               docker compose, as the deploy scripts run it
EOF
        ;;
    *) die "unknown command (provision, deploy, rollback, releases, backup, restore, status, compose)" ;;
esac
