# shellcheck shell=bash
# nginx without a gap: it follows its configuration (compose files, nginx/)
# and its image by handing over to a new nginx on the same ports, inside the
# edge container's network namespace (docs/deploy.md, "nginx without a gap").
# Sourced by scripts/server.sh; defines functions only.

# nginx follows its configuration (compose files, nginx/) and its image
# without a gap: replace_nginx. Only a change to edge, which holds the
# published ports (HTTPS turned on adds 443), needs both recreated: a second
# or so of refused connections, hence only then.
refresh_nginx() {
    local container edge sum image old
    container=$(containers nginx running | head -n 1)
    edge=$(containers edge running | head -n 1)
    # What nginx runs from: its files and its compose configuration. (Not the
    # container's config-hash label: the handover's --no-deps changes it.)
    sum=$({
        (find nginx -type f -print0 2>/dev/null || true) | sort -z | xargs -0 cat
        wanted_config_hash nginx
    } | sha256sum | cut -c1-64)
    if [ -z "$container" ] || [ -z "$edge" ] || [ "$(config_hash "$edge")" != "$(wanted_config_hash edge)" ]; then
        step "starting nginx and the ports it serves"
        quietly compose up --detach --wait --no-build edge nginx || die "nginx did not start healthy: see scripts/logs"
    else
        image=$(docker inspect --format '{{.Config.Image}}' "$container")
        old=$(docker inspect --format '{{.Image}}' "$container")
        if [ "$old" != "$(image_id "$image")" ]; then
            step "a newer $image build is here: a new nginx takes over"
            if ! replace_nginx; then
                docker tag "$old" "$image"
                die "the newer $image build never turned healthy: the old nginx keeps serving, and $image names it again"
            fi
        elif [ -f .nginx.sum ] && [ "$(cat .nginx.sum)" != "$sum" ]; then
            step "nginx's configuration changed: a new nginx takes over"
            replace_nginx || die "the new configuration never turned healthy: the old nginx keeps serving"
        fi
    fi
    echo "$sum" >.nginx.sum
}

# A second nginx starts in edge's network namespace, on the same ports
# (reuseport), from the compose files, nginx/ and image as they are now. Once
# it is healthy the old one stops: SIGQUIT, nginx's graceful stop, finishes
# what it serves, and the kernel hands the connections still queued on its
# socket to the new one (edge's tcp_migrate_req). One that never turns
# healthy is removed, and the old one serves on.
replace_nginx() {
    local old new failure
    mapfile -t old < <(containers nginx running)
    quietly compose up --detach --no-deps --no-recreate --no-build --scale "nginx=$((${#old[@]} + 1))" nginx ||
        return 1
    mapfile -t new < <(containers nginx running | grep -vxF -f <(printf '%s\n' "${old[@]}"))
    [ ${#new[@]} -gt 0 ] || return 1
    if ! failure=$(wait_healthy 120 "${new[@]}"); then
        say "    the new nginx: $failure; last lines of its log:"
        docker logs --tail 10 "${new[0]}" 2>&1 | indent | indent
        docker rm --force "${new[@]}" >/dev/null
        return 1
    fi
    docker stop "${old[@]}" >/dev/null
    docker rm "${old[@]}" >/dev/null
    say "    the new nginx serves; the old one finished and stopped"
}
