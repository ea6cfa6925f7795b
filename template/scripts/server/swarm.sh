# shellcheck shell=bash
# swarm: the stack on a Docker Swarm of several servers (compose.swarm.yaml,
# docs/scaling.md), when the manager's .env says DEPLOY_MODE=swarm. Deploy,
# rollback and status run here, on the manager; swarm moves the tasks. The
# small builders (names, the environment) are unit-tested without an engine
# (tests/test_swarm_units.py). Sourced by scripts/server.sh; defines
# functions only.

swarm_mode() { [ "$(env_value DEPLOY_MODE)" = swarm ]; }

# load_dotenv FILE: export each NAME=VALUE line of a .env file as compose
# reads it (docker stack reads no .env): the value as written, without the
# quotes around it, if any; comments and blank lines skipped.
load_dotenv() {
    local line name value
    while IFS= read -r line || [ -n "$line" ]; do
        [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        name=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
        case $value in
            \"*\" | \'*\') value=${value:1:${#value}-2} ;;
        esac
        export "$name=$value"
    done <"$1"
}

# swarm_name KIND DIGEST: a secret's or config's name. Both are immutable:
# a changed value gets a new name (12 hex digits of its SHA-256), which
# updates the services that use it.
swarm_name() { printf '%s_%s_%.12s' "$PROJECT" "$1" "$2"; }
digest() { sha256sum | cut -d ' ' -f 1; }

# swarm_secret KIND VALUE: create the secret unless it exists (from stdin:
# the value never reaches a file or a command line); print its name.
swarm_secret() {
    local name
    name=$(swarm_name "$1" "$(printf '%s' "$2" | digest)")
    docker secret inspect "$name" >/dev/null 2>&1 ||
        printf '%s' "$2" | docker secret create --label "$PROJECT.secret=$1" "$name" - >/dev/null
    printf '%s' "$name"
}

swarm_config() {
    local name
    name=$(swarm_name "$1" "$(digest <"$2")")
    docker config inspect "$name" >/dev/null 2>&1 ||
        docker config create --label "$PROJECT.config=$1" "$name" "$2" >/dev/null
    printf '%s' "$name"
}

# The app's DATABASE_URL: .env's own (a managed Postgres; the stack's db
# then runs no task), or the stack's db as compose.yaml builds it.
swarm_database_url() {
    if [ -n "${DATABASE_URL:-}" ]; then
        printf '%s' "$DATABASE_URL"
    else
        printf 'postgresql://%s:%s@db:5432/%s' "${APP_DB_USER:-${PROJECT}_app}" "$APP_DB_PASSWORD" "$POSTGRES_DB"
    fi
}

# swarm_environment: .env exported, with the names compose.swarm.yaml needs.
swarm_environment() {
    load_dotenv .env
    [ -n "${SECRET_KEY:-}" ] || die "SECRET_KEY is not set in $APP_DIR/.env"
    [ -n "${APP_DB_PASSWORD:-}" ] || die "APP_DB_PASSWORD is not set in $APP_DIR/.env"
    export DB_REPLICAS=1
    if [ -n "${DATABASE_URL:-}" ]; then
        [[ ! $DATABASE_URL =~ @(127\.0\.0\.1|localhost)[:/] ]] ||
            die "DATABASE_URL in .env names this machine, which no task reaches: remove it (the stack's db serves) or name your managed database"
        DB_REPLICAS=0
    fi
    SECRET_KEY_SECRET=$(swarm_secret secret_key "$SECRET_KEY")
    DATABASE_URL_SECRET=$(swarm_secret database_url "$(swarm_database_url)")
    POSTGRES_PASSWORD_SECRET=$(swarm_secret postgres_password "$POSTGRES_PASSWORD")
    APP_DB_PASSWORD_SECRET=$(swarm_secret app_db_password "$APP_DB_PASSWORD")
    export SECRET_KEY_SECRET DATABASE_URL_SECRET POSTGRES_PASSWORD_SECRET APP_DB_PASSWORD_SECRET
    # server/jobs.sh, in projects that have it, adds its broker's.
    if declare -F swarm_job_secrets >/dev/null; then swarm_job_secrets; fi
    DB_HEALTHCHECK_CONFIG=$(swarm_config db_healthcheck db/healthcheck.sh)
    NGINX_CONF_CONFIG=$(swarm_config nginx_conf nginx/nginx.conf)
    NGINX_SITE_CONFIG=$(swarm_config nginx_site nginx/templates/default.conf.template)
    export DB_HEALTHCHECK_CONFIG NGINX_CONF_CONFIG NGINX_SITE_CONFIG
    # A variable the shell of scripts/server.sh set must not win over .env's.
    unset SECRET_KEY POSTGRES_PASSWORD APP_DB_PASSWORD DATABASE_URL
}

# --resolve-image never: no registry is asked; every node holds the images
# under their immutable release tags (docs/scaling.md, "Images").
stack_deploy() {
    quietly docker stack deploy --compose-file compose.swarm.yaml --resolve-image never --prune \
        --detach=true "$PROJECT"
}

stack_services() {
    docker stack services --format '{{.Name}}' "$PROJECT" | sed "s/^${PROJECT}_//"
}

# The image tag a service of the stack runs (empty if there is none yet).
service_release() {
    local image
    image=$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${PROJECT}_$1" 2>/dev/null) ||
        return 0
    image=${image%%@*}
    printf '%s' "${image##*:}"
}

# job_state SERVICE: the state of the job's current run: complete, failed
# (every attempt its restart policy allows failed), or running.
job_state() {
    local service=${PROJECT}_$1 iteration attempts task
    iteration=$(docker service inspect --format '{{.JobStatus.JobIteration.Index}}' "$service")
    attempts=$(docker service inspect --format '{{.Spec.TaskTemplate.RestartPolicy.MaxAttempts}}' "$service")
    for task in $(docker service ps --quiet --no-trunc "$service"); do
        docker inspect --format '{{.JobIteration.Index}} {{.Status.State}}' "$task"
    done | awk -v want="$iteration" -v attempts="${attempts:-1}" '
        $1 != want { next }
        $2 == "complete" { done = 1 }
        $2 == "failed" || $2 == "rejected" { failed++ }
        END {
            if (done) print "complete"
            else if (failed >= attempts) print "failed"
            else print "running"
        }'
}

# update_state SERVICE: where its last update is (completed, paused,
# rollback_completed...), or "new" for a service never updated.
update_state() {
    local state
    state=$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${PROJECT}_$1")
    printf '%s' "${state:-new}"
}

# all_running SERVICE: exactly the tasks it wants run, healthy where it has
# a healthcheck, each with its spec's image: an update has none left to do.
all_running() {
    local service=${PROJECT}_$1 image want
    image=$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$service")
    want=$(docker service inspect --format '{{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{end}}' "$service")
    docker service ps --filter desired-state=running --format '{{.Image}}|{{.CurrentState}}' "$service" |
        awk -F '|' -v image="$image" -v want="${want:-1}" '
            { n++ } $1 == image && $2 ~ /^Running/ { ok++ }
            END { exit !(n == want && ok == want) }'
}

# wait_converged SERVICE TIMEOUT: until its update is done and its tasks run.
# Fails once swarm rolled the update back, or at TIMEOUT.
wait_converged() {
    local deadline=$((SECONDS + $2))
    while :; do
        case $(update_state "$1") in
            rollback_completed | rollback_paused | paused) return 1 ;;
            # None under way (none needed, or not started yet), or done.
            new | completed) ! all_running "$1" || return 0 ;;
        esac
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 2
    done
}

# swarm_go_live ACTION RELEASE SOURCE TIMEOUT: as go_live (release.sh), on
# the swarm. The release serves when this returns; a release whose tasks do
# not turn healthy is rolled back by swarm itself, and this fails.
swarm_go_live() {
    local action=$1 release=$2 source=$3 timeout=$4 current migrated state service
    current=$(service_release app)
    swarm_environment
    migrated=$(service_release migrate)
    if [ "$action" = deploy ]; then
        # The release job alone first: the app stays on the current release.
        step "release job of $release: migrations, static files (the app stays on ${current:-nothing yet})"
        export APP_RELEASE=${current:-$release} MIGRATE_RELEASE=$release
        stack_deploy
        local deadline=$((SECONDS + timeout))
        until state=$(job_state migrate) && [ "$state" = complete ]; do
            [ "$state" != failed ] || die "the release job of $release failed (docker service logs ${PROJECT}_migrate, on the manager): the app still runs ${current:-nothing}"
            [ "$SECONDS" -lt "$deadline" ] || die "the release job of $release did not finish within ${timeout}s"
            sleep 2
        done
    else
        # A rollback runs no migrations: the schema stays as it is.
        export MIGRATE_RELEASE=${migrated:-$release}
    fi
    step "rolling update to $release: one app task at a time, each healthy before an old one stops"
    export APP_RELEASE=$release
    stack_deploy
    for service in app $(stack_services | grep -vx 'app\|migrate'); do
        if ! wait_converged "$service" "$timeout"; then
            [ "$service" != app ] ||
                die "release $release did not turn healthy: swarm rolled the app back to ${current:-nothing} ($(update_state app))"
            die "$service did not converge on $release ($(update_state "$service")): see scripts/status"
        fi
    done
    set_current_release "$release"
    record_release "$action" "$release" "$source"
    step "$release serves"
}

# Tasks per node, for scripts/status: NODE SERVICE STATE, one line each.
swarm_tasks() {
    docker stack ps --filter desired-state=running --format '{{.Node}} {{.Name}} {{.CurrentState}}' "$PROJECT" |
        sed -E 's/^([^ ]+) [^ ]*_([a-z]+)\.[^ ]+ /\1 \2 /' | sort
}

# scripts/status on a swarm: the release, the nodes, the tasks on each, and
# what nginx serves here (on the edge node). Fails when a service lacks tasks.
swarm_status() {
    local current service problems=() answer
    current=$(current_release)
    say "project   $PROJECT in $APP_DIR (swarm: compose.swarm.yaml, docs/scaling.md)"
    say "release   ${current:-none} ($(went_live "$current"))"
    docker node ls --format '{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}' |
        while read -r node status availability role; do
            printf 'node      %s: %s, %s%s\n' "$node" "${status,,}" "${availability,,}" "${role:+, manager}"
        done
    swarm_tasks | while read -r node service state; do
        printf '  %-14s %-10s %s\n' "$node" "$service" "$state"
    done
    for service in $(stack_services | grep -vx migrate); do
        all_running "$service" || problems+=("$service: not all its tasks run")
    done
    if answer=$(curl --silent --show-error --max-time 5 --header 'Host: localhost' \
        "http://127.0.0.1:$(env_value HTTP_PORT | grep . || echo 80)/healthz" 2>&1); then
        say "serving   $answer (GET /healthz through nginx)"
    else
        say "serving   nothing here: $answer (nginx runs on the node labelled $PROJECT.edge=true)"
    fi
    if [ ${#problems[@]} -gt 0 ]; then
        local IFS=';'
        local joined="${problems[*]}"
        die "${joined//;/; }"
    fi
}

# provision_swarm PROJECT APP_DIR ADDRESS/PREFIX [TOKEN MANAGER]: as root,
# from provision --swarm. The swarm's ports open to the private network
# (PREFIX) only; then a new swarm with this node as its manager, holding the
# database and nginx (labels), or, with TOKEN, this node joins MANAGER's.
provision_swarm() {
    local slug=$1 dir=$2 cidr=$3 token=${4:-} manager=${5:-} address network rule state
    address=${cidr%/*}
    network=$(swarm_network "$cidr")
    # Ports in increasing order, as `ufw status` lists them.
    for rule in "2377,7946 proto tcp" "4789,7946 proto udp"; do
        # shellcheck disable=SC2086 # the rule's words
        if ufw status | grep -qE "^${rule%% *}/${rule##* } +ALLOW +${network//./\\.}( |$)"; then
            unchanged "ufw: swarm ports ${rule%% *}/${rule##* } from $network"
        else
            ufw allow from "$network" to any port $rule >/dev/null
            changed "ufw: swarm ports ${rule%% *}/${rule##* } from $network"
        fi
    done
    state=$(docker info --format '{{.Swarm.LocalNodeState}}')
    if [ "$state" = active ]; then
        unchanged "in a swarm already (docker info: $(docker info --format '{{.Swarm.NodeAddr}}'))"
    elif [ -n "$token" ]; then
        quietly docker swarm join --advertise-addr "$address" --token "$token" "$manager"
        changed "joined the swarm of $manager as a worker"
    else
        quietly docker swarm init --advertise-addr "$address"
        changed "a new swarm, this node its manager, at $address"
    fi
    [ -z "$token" ] || return 0
    local node
    node=$(docker info --format '{{.Swarm.NodeID}}')
    if [ "$(docker node inspect --format "{{index .Spec.Labels \"$slug.db\"}} {{index .Spec.Labels \"$slug.edge\"}}" "$node")" = "true true" ]; then
        unchanged "labels: $slug.db and $slug.edge (the database and nginx run here)"
    else
        quietly docker node update --label-add "$slug.db=true" --label-add "$slug.edge=true" "$node"
        changed "labels: $slug.db and $slug.edge (the database and nginx run here)"
    fi
    if grep -q '^DEPLOY_MODE=swarm$' "$dir/.env"; then
        unchanged "$dir/.env: DEPLOY_MODE=swarm"
    else
        sed -i '/^DEPLOY_MODE=/d' "$dir/.env"
        printf '\n# Deploys go to the swarm (compose.swarm.yaml, docs/scaling.md).\nDEPLOY_MODE=swarm\n' >>"$dir/.env"
        changed "$dir/.env: DEPLOY_MODE=swarm"
    fi
}

# swarm_network ADDRESS/PREFIX: the network it is in (10.0.0.5/24 -> 10.0.0.0/24).
swarm_network() {
    local address=${1%/*} prefix=${1#*/} a b c d n
    IFS=. read -r a b c d <<<"$address"
    n=$(((a << 24 | b << 16 | c << 8 | d) & (prefix == 0 ? 0 : 0xFFFFFFFF << (32 - prefix) & 0xFFFFFFFF)))
    printf '%d.%d.%d.%d/%d' $((n >> 24 & 255)) $((n >> 16 & 255)) $((n >> 8 & 255)) $((n & 255)) "$prefix"
}

# server.sh drain NODE: before maintenance. A plain `docker node update
# --availability drain` stops all of NODE's tasks at once, which is an outage
# when every app task runs there. So the app's (and the workers') tasks move
# first, as a rolling update (a constraint that excludes NODE): one at a time,
# each new one healthy before an old one stops. Then NODE is drained of what
# is left. The database's and nginx's node cannot be drained without a gap.
cmd_drain() {
    [ $# -eq 1 ] || usage_error "usage: server.sh drain NODE (docker node ls names the nodes)"
    local node=$1 id service
    swarm_node "$node"
    id=$(docker node inspect --format '{{.ID}}' "$node")
    for service in $(spread_services); do
        step "moving $service off $node: one task at a time, each new one healthy first"
        quietly docker service update --quiet --constraint-add "node.id!=$id" "${PROJECT}_$service" ||
            die "$service did not move off $node ($(update_state "$service")): see scripts/status"
    done
    step "draining $node"
    quietly docker node update --availability drain "$node"
    say "    $node runs none of the stack's tasks; server.sh activate $node when it is back"
}

# server.sh activate NODE: NODE takes tasks again, and the app and workers
# spread over it (a rolling update, as for drain).
cmd_activate() {
    [ $# -eq 1 ] || usage_error "usage: server.sh activate NODE (docker node ls names the nodes)"
    local node=$1 id service
    swarm_node "$node"
    id=$(docker node inspect --format '{{.ID}}' "$node")
    step "activating $node"
    quietly docker node update --availability active "$node"
    for service in $(spread_services); do
        if docker service inspect --format '{{json .Spec.TaskTemplate.Placement.Constraints}}' "${PROJECT}_$service" |
            grep -qF "\"node.id!=$id\""; then
            step "spreading $service over $node again, one task at a time"
            quietly docker service update --quiet --constraint-rm "node.id!=$id" "${PROJECT}_$service" ||
                die "$service did not spread over $node ($(update_state "$service")): see scripts/status"
        fi
    done
}

swarm_node() {
    project_dir
    swarm_mode || die "$COMMAND is for a swarm: $APP_DIR/.env does not say DEPLOY_MODE=swarm"
    docker node inspect "$1" >/dev/null 2>&1 || die "no node $1 in this swarm (docker node ls names the nodes)"
    lock
}

# The services whose tasks spread over the nodes: the app and the workers.
spread_services() { stack_services | grep -x 'app\|worker' || true; }
