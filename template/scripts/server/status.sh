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
    local previous newest
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
    newest=$( (find backups -maxdepth 1 -name '*.dump' -printf '%f\n' 2>/dev/null || true) | sort)
    say "backups   $(grep -c . <<<"$newest" || true), newest: $(tail -n 1 <<<"${newest:-none}")"
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
