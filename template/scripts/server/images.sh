# shellcheck shell=bash
# Images on the server: which ones compose.yaml needs that are missing, and
# naming an uploaded or pulled image the way compose.yaml runs it,
# <project>:RELEASE. scripts/deploy calls these before `deploy`.
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
