# shellcheck shell=bash
# Images on the server: which ones compose.yaml needs that are missing,
# naming an uploaded or pulled image the way compose.yaml runs it,
# <project>:RELEASE, and newer builds of the others (refresh-images).
# Sourced by scripts/server.sh; defines functions only.

# Images compose.yaml needs that are not on the server, the app's aside.
cmd_missing_images() {
    project_dir
    local image
    for image in $(compose config --images); do
        [[ $image == "$PROJECT:"* ]] && continue
        docker image inspect "$image" >/dev/null 2>&1 || echo "$image"
    done
}

# tag IMAGE RELEASE: name IMAGE <project>:RELEASE.
cmd_tag() {
    [ $# -eq 2 ] || die "usage: server.sh tag IMAGE RELEASE"
    project_dir
    tag_release "$1" "$2"
}

# pull IMAGE RELEASE: pull IMAGE from its registry, then name it.
cmd_pull() {
    [ $# -eq 2 ] || die "usage: server.sh pull IMAGE RELEASE"
    project_dir
    local image=$1 release=$2
    valid_release "$release" || die "not a release id: '$release'"
    step "pulling $image on the server"
    docker pull --quiet "$image" | indent || die "could not pull $image (private image: log the server in with docker login)"
    tag_release "$image" "$release"
}

tag_release() {
    local image=$1 release=$2
    valid_release "$release" || die "not a release id: '$release'"
    if [ "$image" != "$PROJECT:$release" ]; then
        docker tag "$image" "$PROJECT:$release"
        docker image rm "$image" >/dev/null
    fi
}

# server.sh refresh-images [--postgres]: newer builds of the images compose
# names besides the app's (security fixes come as new builds of the same
# tag), pulled where a registry answers; nginx and certbot switch to them
# behind their health checks. The database only with --postgres: a restart,
# so a few seconds without it. The weekly timer runs it without.
cmd_refresh_images() {
    local postgres=false
    case ${1:-} in
        --postgres) postgres=true ;;
        "") ;;
        -h | --help) echo "server.sh refresh-images [--postgres]" && exit 0 ;;
        *) usage_error "unknown option $1" ;;
    esac
    project_dir
    [ -f compose.yaml ] || die "nothing deployed on this server yet: run scripts/deploy"
    lock
    step "pulling newer builds of the images compose.yaml names"
    pull_images
    refresh_nginx
    refresh_services
    local db image
    db=$(containers db running | head -n 1)
    [ -n "$db" ] || return 0
    image=$(docker inspect --format '{{.Config.Image}}' "$db")
    if [ "$(docker inspect --format '{{.Image}}' "$db")" = "$(image_id "$image")" ]; then
        step "the database runs the newest $image here"
    elif $postgres; then
        step "restarting the database on the newer $image build: a few seconds without it"
        quietly compose up --detach --wait --no-deps --no-build db ||
            die "the database did not come back healthy on the new $image build: see scripts/logs"
        step "the database runs the new build"
    else
        say "    a newer $image build is here: scripts/refresh-images --postgres applies it (a restart of a few seconds)"
    fi
}

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# docker pull each image but the app's; an image no registry serves here
# stays as it is (scripts/deploy uploads newer builds from a laptop).
pull_images() {
    local image before
    for image in $(compose config --images | sort -u); do
        [[ $image == "$PROJECT:"* ]] && continue
        before=$(image_id "$image")
        if ! timeout 300 docker pull --quiet "$image" >/dev/null 2>&1; then
            say "    $image: no registry answers (kept as it is)"
        elif [ "$(image_id "$image")" = "$before" ]; then
            say "    $image: up to date"
        else
            say "    $image: newer build pulled"
        fi
    done
}

# certbot (with HTTPS) onto the image its tag names now, health-gated: a
# build that never turns healthy is replaced by the one that ran before.
# (nginx: refresh_nginx.)
refresh_services() {
    local service container image old
    for service in $(compose config --services); do
        [ "$service" = certbot ] || continue
        container=$(containers "$service" running | head -n 1)
        [ -n "$container" ] || continue
        image=$(docker inspect --format '{{.Config.Image}}' "$container")
        old=$(docker inspect --format '{{.Image}}' "$container")
        [ "$old" != "$(image_id "$image")" ] || continue
        step "switching $service to the newer $image build"
        if ! replace_service "$service"; then
            docker tag "$old" "$image"
            replace_service "$service" || die "$service is down: neither build of $image turned healthy (see scripts/logs)"
            die "the newer $image build never turned healthy: $service is back on the previous one"
        fi
    done
}

# Recreate SERVICE on the image its tag names now; fails unless it turns
# healthy.
replace_service() {
    quietly compose up --detach --wait --no-deps --no-build "$1"
}
