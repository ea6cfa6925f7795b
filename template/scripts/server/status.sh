# shellcheck shell=bash
# Read-only views of the server: status (what serves, and whether it is
# healthy) and releases (the history). Sourced by scripts/server.sh; defines
# functions only.

cmd_releases() {
    project_dir
    [ -f releases.log ] || die "no release has been deployed yet"
    cat releases.log
}

# Prints one line per fact; fails with every problem found, on one line.
cmd_status() {
    project_dir
    if swarm_mode; then
        swarm_status
        return
    fi
    [ -f compose.yaml ] || die "nothing deployed on this server yet: run scripts/deploy"
    local current problems=() service line
    current=$(current_release)
    say "project   $PROJECT in $APP_DIR"
    say "release   ${current:-none} ($(went_live "$current"))"
    for service in $(compose config --services); do
        [ "$service" != migrate ] || continue
        line=$(service_health "$service")
        printf '%-9s %s\n' "$service" "$line"
        case " $line " in
            " not running ") problems+=("$service is not running") ;;
            *" starting "* | *" unhealthy "*) problems+=("$service is ${line// /, }") ;;
        esac
    done
    # A switch cut short leaves two releases' containers behind nginx.
    local serving
    serving=$(serving_releases)
    if [ "$(wc -w <<<"$serving")" -gt 1 ]; then
        say "releases  ${serving// /, } serve at once"
        problems+=("app containers of several releases serve at once (the next deploy or rollback keeps only one)")
    fi
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
    https_status
    local previous
    previous=$(previous_release "$current")
    say "rollback  ${previous:-no earlier release}"
    if [ -f "sboms/$current.cdx.json" ]; then
        say "sbom      sboms/$current.cdx.json ($(grep -o '"purl"' "sboms/$current.cdx.json" | wc -l) packages)"
    else
        say "sbom      none for $current (scripts/deploy ships one where uv runs)"
    fi
    local run
    run=$(last_run)
    [ -z "$run" ] || say "last run  $run"
    backup_status
    alerts_status
    say "disk      $(df -h --output=avail "$APP_DIR" | tail -n 1 | tr -d ' ') free"
    if [ ${#problems[@]} -gt 0 ]; then
        local IFS=';'
        local joined="${problems[*]}"
        die "${joined//;/; }"
    fi
}

# With HTTPS, the certificate's days left (scripts/cert-expiry fails under
# 14, or with the placeholder); without, a warning (not a failure: HTTPS
# needs DNS first).
# Adds to the caller's problems.
https_status() {
    local report
    if ! compose config --services | grep -qx certbot; then
        say "https     off: warning, production serves plain HTTP (docs/https.md turns HTTPS on)"
    elif report=$("$APP_DIR/scripts/cert-expiry" 2>&1); then
        say "https     $report"
    else
        say "https     $report"
        problems+=("the certificate needs attention: ${report%%$'\n'*}")
    fi
}

# How many dumps backups/ holds, and the newest one's age: over 26 hours
# (the daily backup plus two hours) needs attention, as the BackupTooOld
# alert says. None at all is a warning only: a new server's first nightly
# backup is still to come. Adds to the caller's problems.
backup_status() {
    local dumps count newest age
    dumps=$( (find backups -maxdepth 1 -name '*.dump' -printf '%T@ %f\n' 2>/dev/null || true) | sort -n)
    count=$(grep -c . <<<"$dumps" || true)
    if [ "$count" -eq 0 ]; then
        say "backups   none yet: warning, the daily backup timer makes one at 03:00 (or run scripts/backup)"
        offsite_status
        return 0
    fi
    newest=$(tail -n 1 <<<"$dumps")
    age=$(($(date +%s) - ${newest%%.*}))
    say "backups   $count, newest: ${newest#* } ($((age / 3600)) h old)"
    [ "$age" -le $((26 * 3600)) ] ||
        problems+=("the newest backup is $((age / 3600)) hours old (journalctl -u $PROJECT-backup says why)")
    offsite_status
}

# With a restic repository in .env: the newest offsite snapshot's age (over
# 26 hours needs attention), and whether the last attempt failed, as the
# nightly backup recorded them (status never waits on the repository).
offsite_status() {
    offsite_on || {
        say "offsite   off: warning, the backups stay on this server (docs/backups.md, \"Offsite backups\")"
        return 0
    }
    local ok_at snapshot age failed_at reason
    if [ -f "$OFFSITE_OK" ]; then
        read -r ok_at snapshot <"$OFFSITE_OK"
        age=$(($(date +%s) - ok_at))
        say "offsite   snapshot ${snapshot:0:8} ($((age / 3600)) h old) at $(repository)"
        [ "$age" -le $((26 * 3600)) ] ||
            problems+=("the newest offsite snapshot is $((age / 3600)) hours old (journalctl -u $PROJECT-backup says why)")
    else
        say "offsite   no snapshot yet at $(repository): the nightly backup makes one"
    fi
    if [ -f "$OFFSITE_FAILED" ]; then
        read -r failed_at reason <"$OFFSITE_FAILED"
        say "offsite   failed $(date -u -d "@$failed_at" '+%Y-%m-%d %H:%M UTC'): $reason"
        problems+=("the last offsite backup failed: $reason")
    fi
}

# With compose.monitoring.yaml, the alerts firing now, as Alertmanager has
# them (silenced ones left out): each needs attention (docs/observability.md
# says what to do). Adds to the caller's problems.
alerts_status() {
    local answer firing
    if ! compose config --services | grep -qx alertmanager; then
        say "alerts    no monitoring (docs/observability.md turns it on)"
        return 0
    fi
    if ! answer=$(compose exec -T alertmanager \
        wget -q -O - 'http://127.0.0.1:9093/api/v2/alerts?active=true&silenced=false&inhibited=false' 2>&1); then
        say "alerts    Alertmanager does not answer: ${answer:-no output}"
        problems+=("Alertmanager does not answer (docker compose logs alertmanager)")
        return 0
    fi
    firing=$( (grep -o '"alertname": *"[^"]*"' <<<"$answer" || true) | sed 's/.*"\([^"]*\)"$/\1/' | sort -u | paste -sd ' ' -)
    if [ -z "$firing" ]; then
        say "alerts    none firing"
    else
        say "alerts    firing: ${firing// /, }"
        problems+=("alerts firing: ${firing// /, } (docs/observability.md, \"Alerts\")")
    fi
}

# When RELEASE went live, from releases.log.
went_live() {
    awk -F '\t' -v r="$1" '$3 == r { t = $1 " by " $2 } END { print t ? "went live " t : "not in releases.log" }' \
        releases.log 2>/dev/null || echo "no releases.log"
}

# The releases of the running app containers, by image tag, each once.
serving_releases() {
    local container
    for container in $(containers app running); do
        docker inspect --format '{{.Config.Image}}' "$container"
    done | sed "s/^$PROJECT://" | sort -u | paste -sd ' ' -
}

# The health of each running container of SERVICE (healthy, starting,
# unhealthy, or running when it has no healthcheck), or "not running".
service_health() {
    local container line=""
    for container in $(containers "$1" running); do
        line+="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}' "$container") "
    done
    line=${line:-not running }
    echo "${line% }"
}
