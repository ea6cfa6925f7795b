# shellcheck shell=bash
# Putting a release live: deploy (release step, then the switch), rollback
# (the switch alone), and what both do after it (nginx, pruning). The switch
# is the subtle part: docs/deploy.md says how it keeps every request served.
# Sourced by scripts/server.sh; defines functions only.

usage_deploy() {
    cat <<EOF
server.sh deploy RELEASE [--source TEXT] [--keep N] [--health-timeout SECONDS]
server.sh rollback [RELEASE] [--keep N] [--health-timeout SECONDS]

Switch the stack to the image <project>:RELEASE, which must be on the server.
rollback goes back to the release that served before the current one.
EOF
}

# Options shared by deploy and rollback, into the caller's locals `keep`,
# `timeout`, `source` and `release` (the one positional argument).
parse_release_options() {
    while [ $# -gt 0 ]; do
        case $1 in
            --source | --keep | --health-timeout)
                [ $# -ge 2 ] || usage_error "$1 needs a value"
                case $1 in
                    --source) source=$2 ;;
                    --keep) keep=$2 ;;
                    --health-timeout) timeout=$2 ;;
                esac
                shift
                ;;
            -h | --help) usage_deploy && exit 0 ;;
            -*) usage_error "unknown option $1" ;;
            *)
                [ -z "$release" ] || usage_error "one RELEASE only"
                release=$1
                ;;
        esac
        shift
    done
    positive "$keep" || usage_error "--keep needs a number of releases, at least 1"
    positive "$timeout" || usage_error "--health-timeout needs a number of seconds"
}

cmd_deploy() {
    local release="" source=uploaded keep=${KEEP_RELEASES:-5} timeout=180
    parse_release_options "$@"
    project_dir
    valid_release "$release" || usage_error "not a release id: '$release'"
    lock
    require_image "$release" "image $PROJECT:$release is not on this server"
    run_detached deploy "$release" go-live deploy "$release" "$source" "$timeout" "$keep"
}

cmd_rollback() {
    local release="" source=rollback keep=${KEEP_RELEASES:-5} timeout=180 current
    parse_release_options "$@"
    project_dir
    current=$(current_release)
    if [ -z "$release" ]; then
        release=$(previous_release "$current")
        [ -n "$release" ] || die "no earlier release in $APP_DIR/releases.log to roll back to"
    fi
    valid_release "$release" || usage_error "not a release id: '$release'"
    [ "$release" != "$current" ] || die "$release is already the current release"
    recent_releases | grep -qxF -- "$release" ||
        die "$release was never deployed here (scripts/status shows the releases that were)"
    lock
    require_image "$release" \
        "the image of $release is no longer on the server (deploy keeps the last few only); deploy it again instead"
    step "rolling back from $current to $release (no migrations: the schema stays as it is)"
    run_detached rollback "$release" go-live rollback "$release" "$source" "$timeout" "$keep"
}

# server.sh go-live ACTION RELEASE SOURCE TIMEOUT KEEP: the detached half of
# deploy and rollback (run_detached), holding the lock it inherited.
cmd_go_live() {
    # shellcheck disable=SC2034 # die and usage_error name it (common.sh)
    COMMAND=$1
    project_dir
    go_live "$@"
}

require_image() {
    docker image inspect "$PROJECT:$1" >/dev/null 2>&1 || die "$2"
}

# go_live ACTION RELEASE SOURCE TIMEOUT KEEP: the release serves when this
# returns. A deploy runs the release step first; a rollback does not (the
# schema stays as the newer release left it).
go_live() {
    local action=$1 release=$2 source=$3 timeout=$4 keep=$5 current
    # On a swarm, swarm itself moves the tasks (server/swarm.sh).
    if swarm_mode; then
        swarm_go_live "$@"
        return
    fi
    current=$(current_release)
    export APP_RELEASE=$release
    check_database_unchanged

    remove_leftovers app
    converge "$current"
    ! has_jobs || converge_jobs "$current"

    if [ -z "$(containers app running)" ]; then
        step "starting the stack with release $release (no app container was running)"
        if ! quietly compose up --detach --wait --wait-timeout "$timeout" --no-build; then
            explain_unhealthy
            die "the stack did not start healthy with release $release (see above, and scripts/logs)"
        fi
        compose ps --format '{{.Service}}: {{.Status}}' | indent
        set_current_release "$release"
        record_release "$action" "$release" "$source"
    else
        [ "$action" = rollback ] || release_step "$release" "$current"
        switch "$release" "${current:-the old release}" "$timeout"
        record_release "$action" "$release" "$source"
        ! has_jobs || switch_jobs "$release" "${current:-the old release}" "$timeout"
    fi
    refresh_nginx
    refresh_services
    check_nginx_serves "$release"
    keep_sbom "$action" "$release"
    prune_images "$keep"
    step "$release serves"
}

# Containers of SERVICE an interrupted deploy left: never started, or stopped.
remove_leftovers() {
    local leftover
    for leftover in $(containers "$1" created) $(containers "$1" exited); do
        docker rm --force "$leftover" >/dev/null
    done
}

# Whether the project has workers that move with each release (server/jobs.sh).
has_jobs() { declare -F switch_jobs >/dev/null; }

# The release's SBOM (sbom.cdx.json, which scripts/deploy ships: the
# packages in its image) stays in sboms/ as long as its image does; a
# rollback puts its own back as the live one.
keep_sbom() {
    local action=$1 release=$2
    if [ "$action" = deploy ] && [ -f sbom.cdx.json ]; then
        install -D -m 640 sbom.cdx.json "sboms/$release.cdx.json"
    elif [ "$action" = rollback ] && [ -f "sboms/$release.cdx.json" ]; then
        cp "sboms/$release.cdx.json" sbom.cdx.json
    else
        rm -f sbom.cdx.json
    fi
}

# A switch cut short (the server rebooted mid-deploy, or a deploy killed
# there) can leave app containers of two releases serving: the one .env
# names keeps serving, the others drain and go.
converge() {
    local current=$1 container ours=() others=()
    [ -n "$current" ] || return 0
    for container in $(containers app running); do
        if [ "$(docker inspect --format '{{.Config.Image}}' "$container")" = "$PROJECT:$current" ]; then
            ours+=("$container")
        else
            others+=("$container")
        fi
    done
    [ ${#ours[@]} -gt 0 ] && [ ${#others[@]} -gt 0 ] || return 0
    step "a switch cut short left ${#others[@]} container(s) of another release serving beside $current: stopping them"
    docker stop "${others[@]}" >/dev/null
    docker rm "${others[@]}" >/dev/null
}

# What each container that is not healthy last said: its health check's
# output and its log's last lines.
explain_unhealthy() {
    local container
    for container in $(compose ps --all --quiet); do
        case $(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container") in
            healthy | running | exited) continue ;;
        esac
        say "    $(docker inspect --format '{{.Name}}' "$container" | tr -d /): health check said:"
        docker inspect --format '{{range .State.Health.Log}}{{.Output}}{{end}}' "$container" | tail -n 3 | indent | indent
        say "    and logged:"
        docker logs --tail 10 "$container" 2>&1 | indent | indent
    done
}

# Deploys never restart the database: that would cut every request off, and a
# new PostgreSQL major version cannot open the old one's data at all.
check_database_unchanged() {
    local running
    running=$(containers db running | head -n 1)
    [ -n "$running" ] || return 0
    [ "$(config_hash "$running")" = "$(wanted_config_hash db)" ] ||
        die "the compose files change the db service, and deploy never restarts the database: apply that on the server first (docker compose up -d db, a short outage; a new PostgreSQL major version: scripts/upgrade-postgres), then deploy again"
}

# Migrations and static files, once, before any container of the new release
# serves. The old release keeps serving meanwhile, so migrations must keep
# the schema usable by the old code (add now, remove in a later release).
release_step() {
    local release=$1 current=${2:-the old release} container code
    pre_migration_dump "$release" "${2:-}"
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
    local release=$1 current=$2 timeout=$3 old new networks container failure wait
    mapfile -t old < <(containers app running)

    step "starting ${#old[@]} app container(s) of $release beside $current"
    quietly compose up --no-start --no-recreate --no-build --scale "app=$((2 * ${#old[@]}))" app ||
        die "could not create the containers of $release; $current keeps serving"
    mapfile -t new < <(containers app created)
    [ ${#new[@]} -gt 0 ] || die "docker compose created no new app container"

    # Keep them off the networks nginx uses until they are healthy.
    networks=$(proxy_networks "${new[0]}")
    for container in "${new[@]}"; do
        for network in $networks; do
            docker network disconnect "$network" "$container"
        done
        docker start "$container" >/dev/null
    done

    step "waiting for $release to turn healthy (up to ${timeout}s), off nginx"
    local started=$SECONDS
    if ! failure=$(wait_healthy "$timeout" "${new[@]}"); then
        say "    last lines of its log:"
        docker logs --tail 15 "${new[0]}" 2>&1 | indent | indent
        docker rm --force "${new[@]}" >/dev/null
        die "release $release never turned healthy ($failure); it got no traffic, and $current keeps serving"
    fi
    say "    healthy after $((SECONDS - started))s"

    step "$release joins nginx's upstream"
    for container in "${new[@]}"; do
        for network in $networks; do
            # The aliases compose gives: the service name and the container name.
            docker network connect --alias app --alias "$(docker inspect --format '{{.Name}}' "$container" | tr -d /)" \
                "$network" "$container"
        done
    done
    set_current_release "$release"

    wait=$(($(nginx_resolve_seconds) + 2))
    step "waiting ${wait}s for nginx to resolve app again and send requests to $release"
    sleep "$wait"

    step "draining $current: requests in flight finish, then its containers stop"
    docker stop "${old[@]}" >/dev/null
    # The moment the old release stopped serving, to the millisecond: the
    # deploy tests check that requests were answered around it.
    say "    stopped ${#old[@]} container(s) of $current at $(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"
    docker rm "${old[@]}" >/dev/null
}

# The networks CONTAINER shares with nginx (whose networks are edge's, see
# compose.yaml): where nginx finds the app.
proxy_networks() {
    local edge network
    edge=$(containers edge running | head -n 1)
    [ -n "$edge" ] || return 0
    for network in $(container_networks "$1"); do
        [[ " $(container_networks "$edge") " != *" $network "* ]] || echo "$network"
    done
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

# wait_healthy TIMEOUT CONTAINER...: returns once every container is healthy;
# otherwise fails, printing why.
wait_healthy() {
    local timeout=$1 start=$SECONDS container state health restarts pending
    shift
    while :; do
        pending=false
        for container in "$@"; do
            read -r state health restarts < <(docker inspect --format \
                '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' \
                "$container" 2>/dev/null || echo removed none 0)
            [ "$restarts" = 0 ] || { echo "it crashed and was restarted" && return 1; }
            case $state/$health in
                running/healthy) ;;
                running/unhealthy) echo "its healthcheck fails" && return 1 ;;
                # No healthcheck in the image: running for 5 seconds will do.
                running/none) [ $((SECONDS - start)) -ge 5 ] || pending=true ;;
                running/* | created/*) pending=true ;;
                *)
                    echo "its container stopped ($state, exit code $(docker inspect --format '{{.State.ExitCode}}' "$container" 2>/dev/null || echo unknown))"
                    return 1
                    ;;
            esac
        done
        $pending || return 0
        [ $((SECONDS - start)) -lt "$timeout" ] || { echo "still not healthy after ${timeout}s" && return 1; }
        sleep 1
    done
}

# nginx keeps the old addresses until it resolves app again. A request sent
# to one now waits for proxy_connect_timeout before nginx tries the new
# release. /healthz answers over plain http even with HTTPS on.
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

# The releases whose images stay: the current one and the KEEP-1 newest
# others that went live (the rollback targets), newest first.
kept_releases() {
    { current_release; recent_releases; } | awk 'NF && !seen[$0]++' | head -n "$1"
}

# Remove every <project>:* image but those of kept_releases.
prune_images() {
    local keep=$1 tag kept=() removed=0 container current sbom
    current=$(current_release)
    mapfile -t kept < <(kept_releases "$keep")
    # The migrate container of another release (a rollback skips the release
    # step, a failed deploy leaves its own) would pin that release's image:
    # recreate it for the current release, without running it. (Not removed:
    # docker compose down fails when a dependency's container is missing.)
    for container in $(containers migrate exited); do
        if [ "$(docker inspect --format '{{.Config.Image}}' "$container")" != "$PROJECT:$current" ]; then
            APP_RELEASE=$current quietly compose up --no-start --no-build migrate
        fi
    done
    for tag in $(docker image ls "$PROJECT" --format '{{.Tag}}'); do
        [[ " ${kept[*]} " == *" $tag "* ]] && continue
        if docker image rm "$PROJECT:$tag" >/dev/null 2>&1; then
            removed=$((removed + 1))
        fi
    done
    docker image prune --force >/dev/null
    for sbom in sboms/*.cdx.json; do
        [ -e "$sbom" ] || continue
        tag=${sbom#sboms/}
        [[ " ${kept[*]} " == *" ${tag%.cdx.json} "* ]] || rm -f "$sbom"
    done
    step "kept the images of ${#kept[@]} release(s) for rollback (${kept[*]}), removed $removed"
}
