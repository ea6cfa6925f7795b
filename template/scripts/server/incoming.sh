# shellcheck shell=bash
# A deploy as scripts/deploy sends it: one SSH stream that takes the deploy
# lock before anything arrives, stages the release's files apart, loads its
# images, then hands over to a run detached from the connection, which swaps
# the files in and switches. A dropped connection or a Ctrl-C on the laptop
# then stops only the laptop's view of the log (docs/deploy.md, "A deploy
# cut short"). Sourced by scripts/server.sh; defines functions only.

# The directory where deploys' staged files and logs live, and how many
# logs stay.
DEPLOYS=deploys
DEPLOY_LOGS_KEPT=20

# server.sh receive STAGE RELEASE [--load] [--tag IMAGE | --pull IMAGE |
#   --fetch IMAGE] [--source TEXT] [--keep N] [--health-timeout SECONDS]
# Run from STAGE/scripts/server.sh by scripts/deploy's stream, with the lock
# held on file descriptor 9 and the images (docker save | gzip) on stdin
# when --load is given. --fetch pulls the app's image from the registry on
# the deploying machine, forwarded to this one's loopback for the stream.
cmd_receive() {
    local stage=$1 release="" source=uploaded keep=${KEEP_RELEASES:-5} timeout=180 load=false tag="" pull=""
    local fetch=""
    shift
    local args=()
    while [ $# -gt 0 ]; do
        case $1 in
            --load) load=true ;;
            --tag | --pull | --fetch)
                [ $# -ge 2 ] || usage_error "$1 needs a value"
                case $1 in
                    --tag) tag=$2 ;;
                    --pull) pull=$2 ;;
                    *) fetch=$2 ;;
                esac
                shift
                ;;
            *) args+=("$1") ;;
        esac
        shift
    done
    parse_release_options "${args[@]}"
    # shellcheck disable=SC2034 # die and usage_error name it (common.sh)
    COMMAND=deploy
    project_dir
    valid_release "$release" || usage_error "not a release id: '$release'"
    [ -e /proc/$$/fd/9 ] || die "receive runs under the deploy lock that scripts/deploy's stream takes"
    if $load; then
        step "loading the images"
        gunzip | docker load | indent
    fi
    [ -z "$tag" ] || cmd_tag "$tag" "$release"
    [ -z "$fetch" ] || fetch_layers "$fetch" "$release"
    run_detached deploy "$release" apply "$stage" "$release" --source "$source" --keep "$keep" \
        --health-timeout "$timeout" ${pull:+--pull "$pull"}
}

# fetch_layers IMAGE RELEASE: pull IMAGE, saying how many of its layers
# came and how many were here already, and name it <project>:RELEASE.
fetch_layers() {
    local image=$1 release=$2 output fetched present
    step "pulling the app's image from the deploying machine: only the layers this server lacks"
    output=$(docker pull "$image" 2>&1) ||
        die "could not pull $image through the SSH connection: $(tail -n 1 <<<"$output")"
    fetched=$(grep -c ': Pull complete$' <<<"$output" || true)
    present=$(grep -c ': Already exists$' <<<"$output" || true)
    say "    $fetched layer(s) pulled, $present already here"
    tag_release "$image" "$release"
}

# server.sh apply STAGE RELEASE [--pull IMAGE] [OPTIONS]: the detached half
# of a deploy, holding the lock it inherited.
cmd_apply() {
    local stage=$1 release="" source=uploaded keep=${KEEP_RELEASES:-5} timeout=180 pull="" args=()
    shift
    while [ $# -gt 0 ]; do
        if [ "$1" = --pull ] && [ $# -ge 2 ]; then pull=$2 && shift; else args+=("$1"); fi
        shift
    done
    parse_release_options "${args[@]}"
    # shellcheck disable=SC2034 # die and usage_error name it (common.sh)
    COMMAND=deploy
    project_dir
    # A deploy without an SBOM (no uv where it came from) leaves none live.
    [ -f "$stage/sbom.cdx.json" ] || rm -f sbom.cdx.json
    install_staged "$stage"
    # The modules in memory came from the stage, now moved in place.
    SERVER_HOME=$APP_DIR/scripts
    [ -z "$pull" ] || cmd_pull "$pull" "$release"
    step "newer builds of the other images, where a registry answers"
    pull_images
    require_image "$release" "image $PROJECT:$release is not on this server"
    go_live deploy "$release" "$source" "$timeout" "$keep"
}

# Each file staged in STAGE replaces its live copy by a rename (bash running
# the old server.sh keeps reading the old one), into the live directories:
# those bind-mounted into running containers (db/, nginx/templates/) then
# show the new files. What the release no longer has goes from the
# directories it ships. Inside the lock: moments, not the upload's minutes.
install_staged() {
    local stage=$1 shipped live file top
    step "putting the release's files in place: $(cd "$stage" && echo *)"
    shipped=$(cd "$stage" && find . ! -type d | sort)
    # New directories get the staged ones' modes, not this script's umask:
    # containers read them as other users (nginx/templates/).
    (cd "$stage" && find . -mindepth 1 -type d) | while read -r file; do
        [ -d "$file" ] || install -d -m "$(stat -c %a "$stage/$file")" "$file"
    done
    while read -r file; do
        mv -f "$stage/$file" "$file"
    done <<<"$shipped"
    for top in $(cd "$stage" && find . -mindepth 1 -maxdepth 1 -type d); do
        live=$(find "$top" ! -type d | sort)
        comm -23 <(echo "$live") <(echo "$shipped") | while read -r file; do rm -f "$file"; done
    done
    rm -rf "$stage"
}

# run_detached ACTION RELEASE COMMAND [ARG...]: run server.sh COMMAND in a
# session of its own (setsid), which a closed SSH connection cannot stop,
# writing to a log in deploys/; show that log as it grows, and end with the
# command's exit status (it exits). The run inherits the deploy lock
# (descriptor 9).
run_detached() {
    local action=$1 release=$2 log pid status=0
    shift 2
    mkdir -p "$DEPLOYS"
    log=$DEPLOYS/$(date -u +%Y%m%dT%H%M%SZ)-$action-$release.log
    say "    (the rest runs on the server even if this connection drops: $APP_DIR/$log)"
    # Created first: tail follows a file that exists.
    : >"$log"
    setsid bash "$SERVER_HOME/server.sh" "$@" </dev/null >>"$log" 2>&1 &
    pid=$!
    tail --lines=+1 --follow --pid="$pid" "$log" 2>/dev/null || true
    wait "$pid" || status=$?
    prune_deploy_logs
    # Its one-line reason, where the scripts look for it: last on stderr.
    [ "$status" -eq 0 ] || tail -n 1 "$log" >&2
    exit "$status"
}

# The newest DEPLOY_LOGS_KEPT logs stay; stages older than a day are what a
# dropped upload left.
prune_deploy_logs() {
    (cd "$DEPLOYS" && find . -maxdepth 1 -name '*.log' -printf '%f\n' | sort -r |
        tail -n +$((DEPLOY_LOGS_KEPT + 1)) | xargs -r rm -f)
    find "$DEPLOYS" -mindepth 1 -maxdepth 1 -type d -name 'incoming.*' -mtime +0 -exec rm -rf {} +
}

# The last deploy or rollback run detached, and its last line, for status.
last_run() {
    local log
    log=$( (find "$DEPLOYS" -maxdepth 1 -name '*.log' -printf '%f\n' 2>/dev/null || true) | sort | tail -n 1)
    [ -n "$log" ] || return 0
    echo "$log: $(grep -v '^[[:space:]]*$' "$DEPLOYS/$log" | tail -n 1)"
}
