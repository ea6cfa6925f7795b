# shellcheck shell=bash
# provision's Docker engine: installed from Docker's apt repository or the
# distribution's, with log rotation and live-restore, and kept updated by
# unattended-upgrades. Sourced by scripts/server.sh; defines functions only.

# Docker's engine from its own apt repository (provision_docker): its
# security fixes come from there, which unattended-upgrades' default origins
# (the distribution's) leave out. live-restore keeps containers running while
# an upgraded engine restarts.
provision_docker_updates() {
    local apt=${APT_ETC:-/etc/apt} # another directory in the unit tests
    local file=$apt/apt.conf.d/51unattended-upgrades-docker
    if [ -f "$apt/sources.list.d/docker.sources" ]; then
        if put_file "$file" 644 root:root <<'EOF'; then
// Written by scripts/provision: the Docker engine comes from Docker's apt
// repository; install its updates too.
Unattended-Upgrade::Origins-Pattern { "origin=Docker,label=Docker CE"; };
EOF
            changed "unattended-upgrades covers Docker's apt repository"
        else
            unchanged "unattended-upgrades covers Docker's apt repository"
        fi
    elif [ -f "$file" ]; then
        rm -f "$file"
        changed "$file removed (the engine comes from the distribution)"
    fi
}

# Docker's own apt repository (docker-ce, docker-compose-plugin) is what
# Docker documents and ships the newest engine and Compose. Debian 13 and
# Ubuntu also package both (docker.io, docker-compose / docker-compose-v2),
# updated by the distribution's security team: used when Docker's repository
# is unreachable (--engine auto), or on request (--engine distro).
provision_docker() {
    local engine=$1 swarm=${2:-} live_restore=true
    # Written before the engine is installed, so that it starts with it.
    # Logs rotate (json-file keeps 5 x 10 MB per container); live-restore
    # keeps containers running while the engine itself restarts or upgrades.
    # Swarm refuses live-restore (an engine in a swarm would not start with
    # it): there, other nodes take the tasks over.
    if [ -n "$swarm" ] || [ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = active ]; then
        live_restore=false
    fi
    if put_file /etc/docker/daemon.json 644 root:root <<EOF; then
{
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "5" },
  "live-restore": $live_restore
}
EOF
        changed "/etc/docker/daemon.json: log rotation, live-restore $live_restore"
        if systemctl is-active --quiet docker; then
            systemctl restart docker
            changed "restarted the Docker engine for its new settings"
        fi
    else
        unchanged "/etc/docker/daemon.json: log rotation, live-restore $live_restore"
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
            # shellcheck disable=SC2034 # apt_install (provision.sh): update again, for the new repository
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
