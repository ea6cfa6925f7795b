# shellcheck shell=bash
# provision: set a Debian or Ubuntu server up for the project, as root
# (scripts/provision runs it over SSH). Idempotent: each step checks before
# it changes anything and says "ok" or "changed"; a second run changes
# nothing. The security steps (the deploy user, SSH, firewall, fail2ban,
# swap) are in hardening.sh, the Docker engine in engine.sh. Sourced by
# scripts/server.sh; defines functions only.

# changed counts into CHANGES, for the summary line (cmd_provision sets it).
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

# apt-get update runs once per provision (APT_UPDATED).
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
server.sh provision --project NAME --domain NAME [--address HOST] [--secret NAME] [--user NAME] [--engine auto|docker|distro]
                    [--swap SIZE] [--env-file FILE] [--key-file FILE] [--ci-key-file FILE]
                    [--swarm ADDRESS/PREFIX [--join-token TOKEN --manager HOST:PORT]]
Run as root. scripts/provision calls it; see scripts/provision --help.
EOF
}

cmd_provision() {
    local project="" domain="" address="" secrets=() user=deploy engine=auto swap=2G env_file="" key_files=()
    local swarm="" join_token="" manager=""
    CHANGES=0 APT_UPDATED=false
    while [ $# -gt 0 ]; do
        case $1 in
            --project) project=$2 && shift ;;
            --domain) domain=$2 && shift ;;
            --address) address=$2 && shift ;;
            --secret)
                [[ $2 =~ ^[A-Z][A-Z0-9_]*$ ]] || die "--secret needs a variable name, not $2"
                secrets+=("$2") && shift
                ;;
            --user) user=$2 && shift ;;
            --engine) engine=$2 && shift ;;
            --swap) swap=$2 && shift ;;
            --env-file) env_file=$2 && shift ;;
            --key-file) key_files+=("$2") && shift ;;
            --ci-key-file) key_files+=(--restricted "$2") && shift ;;
            --swarm) swarm=$2 && shift ;;
            --join-token) join_token=$2 && shift ;;
            --manager) manager=$2 && shift ;;
            -h | --help) usage_provision && exit 0 ;;
            *) die "unknown argument $1" ;;
        esac
        shift
    done
    [ "$(id -u)" = 0 ] || die "provision must run as root"
    [[ $project =~ ^[a-z][a-z0-9_]*$ ]] || die "--project needs the project's slug"
    [[ $user =~ ^[a-z_][a-z0-9_-]*$ ]] || die "not a user name: $user"
    case $engine in auto | docker | distro) ;; *) die "--engine is auto, docker or distro" ;; esac
    [ -z "$swarm" ] || [[ $swarm =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$ ]] ||
        die "--swarm needs the node's private address and its network's prefix length, such as 10.0.0.5/24"
    # shellcheck source=/dev/null
    . /etc/os-release
    case ${ID:-} in debian | ubuntu) ;; *) die "this is ${PRETTY_NAME:-an unknown system}: provision supports Debian and Ubuntu" ;; esac
    local app_dir=/srv/$project

    step "packages"
    # curl: the status check; python3-systemd: fail2ban's systemd backend.
    ensure_packages ca-certificates curl ufw fail2ban python3-systemd unattended-upgrades

    step "Docker engine"
    provision_docker "$engine" "$swarm"

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
    provision_docker_updates

    step "swap"
    provision_swap "$swap"

    if [ -n "$join_token" ]; then
        # The manager holds the project's files and runs its commands and
        # timers; this node runs the tasks swarm gives it.
        step "$app_dir and timers: on the manager only"
        local timer
        for timer in "$project-backup" "$project-backup-verify" "$project-refresh-images"; do
            if systemctl is-enabled --quiet "$timer.timer" 2>/dev/null; then
                systemctl disable --now --quiet "$timer.timer"
                changed "$timer.timer off: the manager runs it"
            fi
        done
    else
        step "$app_dir"
        provision_app_dir "$project" "$domain" "$user" "$app_dir" "$env_file" "$address" "${secrets[*]}"

        step "timers: daily backup, weekly restore drill and image refresh"
        provision_timers "$project" "$user" "$app_dir"
    fi

    if [ -n "$swarm" ]; then
        step "swarm (docs/scaling.md)"
        provision_swarm "$project" "$app_dir" "$swarm" "$join_token" "$manager"
    fi

    step "provision: $CHANGES changed"
}

# Whether DOMAIN's DNS points at this server: one of its addresses is on
# one of the server's interfaces, or is ADDRESS, the one scripts/provision
# connected to (behind 1:1 NAT, the public address is on no interface).
resolves_here() {
    local domain=$1 address=$2 theirs ours
    theirs=$(getent ahosts "$domain" 2>/dev/null | awk '{ print $1 }' | sort -u)
    [ -n "$theirs" ] || return 1
    ours=$({
        hostname -I 2>/dev/null | tr ' ' '\n'
        [ -z "$address" ] || getent ahosts "$address" 2>/dev/null | awk '{ print $1 }'
    } | sort -u)
    [ -n "$(comm -12 <(echo "$theirs") <(echo "$ours"))" ]
}

provision_app_dir() {
    local project=$1 domain=$2 user=$3 app_dir=$4 env_file=$5 address=${6:-} names=${7:-} https
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
        # The other secrets compose.yaml requires (scripts/provision names them).
        local extra="" name
        for name in $names; do
            extra+=$'\n'"$name=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
        done
        # HTTPS from the start when the domain's DNS already points here.
        if resolves_here "$domain" "$address"; then
            https="# HTTPS with a Let's Encrypt certificate: $domain resolved to this server
# when it was provisioned (docs/https.md).
COMPOSE_FILE=compose.yaml:compose.tls.yaml"
        else
            https="# HTTPS is off: $domain did not resolve to this server when it was
# provisioned. Point its DNS here, then uncomment (docs/https.md):
# COMPOSE_FILE=compose.yaml:compose.tls.yaml"
        fi
        put_file "$env" 600 "$user:$user" <<EOF
# Production settings of $project, generated on this server by
# scripts/provision. .env.example in the repository explains each variable.
SECRET_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

POSTGRES_USER=$project
POSTGRES_PASSWORD=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
POSTGRES_DB=$project
APP_DB_USER=${project}_app
APP_DB_PASSWORD=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')$extra

SERVER_NAMES=$domain localhost
HTTP_PORT=80

$https
EOF
        changed "$env generated, with new secrets; HTTPS $(grep -q '^COMPOSE_FILE=' "$env" && echo "on: $domain resolves here" || echo "off: $domain does not resolve here")"
    elif [ "$(stat -c '%a %U:%G' "$env")" != "600 $user:$user" ]; then
        chmod 600 "$env" && chown "$user:$user" "$env"
        changed "$env: mode 600, owned by $user"
    else
        unchanged "$env (mode 600)"
    fi

    # server.sh and its modules, for the backup timer (deploy ships them too).
    local file mode
    install -d -m 755 -o "$user" -g "$user" "$app_dir/scripts/server"
    for file in "$SERVER_HOME/server.sh" "$SERVER_HOME"/server/*.sh; do
        file=${file#"$SERVER_HOME"/} mode=644
        [ "$file" != server.sh ] || mode=755
        if put_file "$app_dir/scripts/$file" "$mode" "$user:$user" <"$SERVER_HOME/$file"; then
            changed "$app_dir/scripts/$file"
        else
            unchanged "$app_dir/scripts/$file"
        fi
    done
}

provision_timers() {
    local project=$1 user=$2 app_dir=$3
    provision_timer "$project-backup" "$user" "daily, keeps 14 dumps" "*-*-* 03:00:00" \
        "$app_dir/scripts/server.sh backup" "Back up the $project database and uploaded files (into $app_dir/backups)" \
        "# How many dumps to keep in $app_dir/backups.
Environment=BACKUP_KEEP=14" "OnFailure=$project-backup-failed@%n.service"
    # The restore drill: restic check, then the newest backup restored into a
    # scratch database and its rows counted (server/offsite.sh).
    provision_timer "$project-backup-verify" "$user" "weekly restore drill" "Sun *-*-* 05:00:00" \
        "$app_dir/scripts/server.sh verify-backup" "Restore $project's newest backup into a scratch database" \
        "" "OnFailure=$project-backup-failed@%n.service"
    # Their failure hook: a webhook, mail, Alertmanager (server/offsite.sh).
    provision_backup_hook "$project" "$user" "$app_dir"
    # Images other than the app's get their fixes from newer builds of their
    # tags: nginx and certbot switch to them on their own, behind the health
    # gate; the database waits for scripts/refresh-images --postgres.
    provision_timer "$project-refresh-images" "$user" "weekly, newer nginx and certbot builds" \
        "Sun *-*-* 04:00:00" "$app_dir/scripts/server.sh refresh-images" \
        "Pull newer builds of $project's nginx and certbot images, and switch to them"
}

# provision_timer UNIT USER SUMMARY CALENDAR COMMAND DESCRIPTION [LINES]
# [UNIT_LINES]: a systemd service that runs COMMAND as USER (LINES added to
# its [Service], UNIT_LINES to its [Unit]), started at CALENDAR times by its
# timer.
provision_timer() {
    local unit=$1 user=$2 summary=$3 calendar=$4 command=$5 description=$6 lines=${7:-} units_changed=false
    local unit_lines=${8:-}
    if put_file "/etc/systemd/system/$unit.service" 644 root:root <<EOF; then
[Unit]
Description=$description
After=docker.service
Requires=docker.service
${unit_lines:+$unit_lines
}
[Service]
Type=oneshot
User=$user
${lines:+$lines
}ExecStart=$command
EOF
        units_changed=true
    fi
    if put_file "/etc/systemd/system/$unit.timer" 644 root:root <<EOF; then
[Unit]
Description=$summary: $unit.service

[Timer]
OnCalendar=$calendar
RandomizedDelaySec=30m
# Catch up on a run missed while the server was off.
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
        unchanged "$unit.timer: $summary"
    else
        systemctl enable --now "$unit.timer" >/dev/null 2>&1
        changed "$unit.timer enabled"
    fi
}
