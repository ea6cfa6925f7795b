#!/bin/sh
# Alertmanager's entrypoint (compose.monitoring.yaml): writes its
# configuration from the environment, then runs alertmanager with the
# arguments given. Alerts go to ALERT_WEBHOOK_URL (a POST of Alertmanager's
# JSON, e.g. a chat's incoming webhook) and, with ALERT_EMAIL_TO, by email
# through EMAIL_URL (smtp://, smtp+tls:// for STARTTLS or smtp+ssl:// for
# TLS from the start, user:password@host:port). See docs/observability.md.
set -eu

config=/tmp/alertmanager.yml
webhook=${ALERT_WEBHOOK_URL:-}
email_to=${ALERT_EMAIL_TO:-}
email_url=${EMAIL_URL:-}

# A YAML string in double quotes.
quoted() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# %XX escapes of a URL's user or password, decoded.
decoded() {
    printf '%s' "$1" | awk '{
        out = ""
        while (match($0, /%[0-9A-Fa-f][0-9A-Fa-f]/)) {
            out = out substr($0, 1, RSTART - 1) sprintf("%c", hex(substr($0, RSTART + 1, 2)))
            $0 = substr($0, RSTART + 3)
        }
        printf "%s", out $0
    }
    function hex(digits,    i, n) {
        n = 0
        for (i = 1; i <= 2; i++) n = n * 16 + index("0123456789abcdef", tolower(substr(digits, i, 1))) - 1
        return n
    }'
}

# One line of the configuration, as is (dash's echo would read backslashes).
line() {
    printf '%s\n' "$*"
}

fail() {
    echo "alertmanager.sh: $*" >&2
    exit 1
}

{
    line "# Written by monitoring/alertmanager.sh from the environment at start."
    line "route:"
    line "  receiver: operators"
    line "  group_by: [alertname]"
    line "  group_wait: ${ALERT_GROUP_WAIT:-30s}"
    line "  group_interval: ${ALERT_GROUP_INTERVAL:-5m}"
    line "  repeat_interval: ${ALERT_REPEAT_INTERVAL:-4h}"
    line "receivers:"
    line "  - name: operators"
    if [ -n "$webhook" ]; then
        line "    webhook_configs:"
        line "      - url: $(quoted "$webhook")"
        line "        send_resolved: true"
    fi
    if [ -n "$email_to" ]; then
        [ -n "$email_url" ] || fail "ALERT_EMAIL_TO is set but EMAIL_URL is not: set EMAIL_URL in .env (docs/observability.md)"
        scheme=${email_url%%://*}
        rest=${email_url#*://}
        case "$scheme" in
            smtp) require_tls=false ;;
            smtp+tls | smtp+ssl) require_tls=true ;;
            *) fail "EMAIL_URL must start with smtp://, smtp+tls:// or smtp+ssl://, not $scheme://" ;;
        esac
        credentials=""
        case "$rest" in *@*) credentials=${rest%@*} && rest=${rest##*@} ;; esac
        host_port=${rest%%/*}
        case "$host_port" in
            *:*) ;;
            *) if [ "$scheme" = smtp+ssl ]; then host_port=$host_port:465; else host_port=$host_port:587; fi ;;
        esac
        # Alertmanager speaks TLS from the start on port 465, STARTTLS elsewhere.
        [ "$scheme" != smtp+ssl ] || [ "${host_port##*:}" = 465 ] ||
            fail "EMAIL_URL: smtp+ssl:// works on port 465 only with Alertmanager; use smtp+tls:// for port ${host_port##*:}"
        line "    email_configs:"
        line "      - to: $(quoted "$email_to")"
        line "        from: $(quoted "${ALERT_EMAIL_FROM:-alertmanager@localhost}")"
        line "        smarthost: $(quoted "$host_port")"
        line "        require_tls: $require_tls"
        line "        send_resolved: true"
        if [ -n "$credentials" ]; then
            password=""
            case "$credentials" in *:*) password=${credentials#*:} ;; esac
            line "        auth_username: $(quoted "$(decoded "${credentials%%:*}")")"
            line "        auth_password: $(quoted "$(decoded "$password")")"
        fi
    fi
} >"$config"

if [ -z "$webhook" ] && [ -z "$email_to" ]; then
    echo "alertmanager.sh: neither ALERT_WEBHOOK_URL nor ALERT_EMAIL_TO is set: alerts show in scripts/status only" >&2
fi
exec /bin/alertmanager --config.file="$config" "$@"
