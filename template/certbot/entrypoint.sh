#!/bin/sh
# The certbot service (compose.tls.yaml): gets the site's certificate from
# Let's Encrypt, or from the ACME server in ACME_SERVER, and keeps it renewed.
# See docs/https.md.
#
# - Names: every name in SERVER_NAMES that a public CA can certify (not
#   localhost, IP addresses or nginx wildcards). The first one names the
#   certificate.
# - Validation is HTTP-01 through nginx: certbot writes each challenge token
#   into the webroot that nginx serves at /.well-known/acme-challenge/.
# - /etc/letsencrypt/serving is what nginx reads: a symlink to a self-signed
#   placeholder until the first certificate arrives, so that nginx can start
#   on a fresh server, then to live/NAME, which certbot updates on renewal.
#   nginx notices the new certificate and reloads (nginx/https/entrypoint.sh).
# - Every CERTBOT_RENEW_INTERVAL seconds (twice a day by default) `certbot
#   certonly --keep-until-expiring` renews the certificate once it is due, and
#   applies changed names or a changed ACME_SERVER. Due means less than
#   CERTBOT_RENEW_BEFORE_EXPIRY left (say "30 days"); unset, certbot decides:
#   a third of the lifetime left, about 30 days for Let's Encrypt's 90-day
#   certificates, or earlier if the CA's renewal info (ARI) says so.
set -eu

interval="${CERTBOT_RENEW_INTERVAL:-43200}"
renew_before_expiry="${CERTBOT_RENEW_BEFORE_EXPIRY:-}"
case "$interval" in
    *[!0-9]*) interval=0 ;;
esac
if [ "$interval" -eq 0 ]; then
    echo "CERTBOT_RENEW_INTERVAL=$CERTBOT_RENEW_INTERVAL is not a positive number of seconds: set it to 43200 (twice a day) or unset it." >&2
    exit 1
fi
# certbot reads text it cannot parse as "now", and would renew only once the
# certificate expired: only a plain duration gets through.
if [ -n "$renew_before_expiry" ] && ! printf '%s\n' "$renew_before_expiry" \
    | grep -Eqx '[0-9]+ (second|minute|hour|day|week)s?( [0-9]+ (second|minute|hour|day|week)s?)*'; then
    echo "CERTBOT_RENEW_BEFORE_EXPIRY=$renew_before_expiry is not a duration such as \"30 days\" or \"12 hours\": fix it or unset it." >&2
    exit 1
fi

webroot=/var/www/certbot
serving=/etc/letsencrypt/serving

domains=""
for name in $(printf '%s' "$SERVER_NAMES" | tr '[:upper:]' '[:lower:]'); do
    case "$name" in
        *.localhost | .* | *. | *[!a-z0-9.-]*) ;;  # local, or an nginx wildcard or regex
        *.*[!0-9.]* | *[!0-9.]*.*) domains="$domains $name" ;;  # dotted, not an IP address
    esac
done
if [ -z "$domains" ]; then
    echo "No name in SERVER_NAMES ($SERVER_NAMES) can get a public certificate." >&2
    exit 1
fi
# shellcheck disable=SC2086 # word splitting is the point
set -- $domains
cert_name="$1"

if [ ! -e "$serving/fullchain.pem" ]; then
    echo "No certificate yet: a self-signed placeholder lets nginx start."
    mkdir -p /etc/letsencrypt/placeholder
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=$cert_name" -addext "subjectAltName=$(printf 'DNS:%s,' "$@" | sed 's/,$//')" \
        -keyout /etc/letsencrypt/placeholder/privkey.pem \
        -out /etc/letsencrypt/placeholder/fullchain.pem 2>/dev/null
    cp /etc/letsencrypt/placeholder/fullchain.pem /etc/letsencrypt/placeholder/chain.pem
    ln -sfn placeholder "$serving"
fi

# nginx answers on port 80 with the webroot's files: checked before each
# attempt, because a validation that fails counts against Let's Encrypt's
# rate limit (5 failures per name per hour). This asks nginx directly, so it
# cannot tell whether DNS points here; certbot's own error will say.
nginx_serves_webroot() {
    probe="$webroot/.well-known/acme-challenge/certbot-probe"
    token="$(date +%s)"
    mkdir -p "$(dirname "$probe")"
    echo "$token" > "$probe"
    python3 - "$token" "$@" <<'PY' || return 1
import sys
import urllib.request

expected, names = sys.argv[1], sys.argv[2:]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for name in names:
    request = urllib.request.Request(
        "http://nginx/.well-known/acme-challenge/certbot-probe", headers={"Host": name}
    )
    try:
        with opener.open(request, timeout=5) as response:
            if response.read().decode().strip() != expected:
                sys.exit(1)
    except OSError:
        sys.exit(1)
PY
}

# certbot has no flag for the threshold: it reads renew_before_expiry from the
# certificate's renewal configuration, and keeps it there across renewals.
set_renewal_threshold() {
    [ -f "$1" ] || return 0  # no certificate yet
    {
        if [ -n "$renew_before_expiry" ]; then echo "renew_before_expiry = $renew_before_expiry"; fi
        grep -v '^renew_before_expiry[[:space:]]*=' "$1" || true
    } > "$1.new"
    cat "$1.new" > "$1"  # in place, keeping the file's owner and mode
    rm "$1.new"
}

obtain() {
    renewal_config="/etc/letsencrypt/renewal/$cert_name.conf"
    set_renewal_threshold "$renewal_config"
    replace=""
    if [ -f "$renewal_config" ] && ! grep -qxF "server = $ACME_SERVER" "$renewal_config"; then
        echo "ACME_SERVER changed: replacing the certificate with one from $ACME_SERVER."
        replace="--force-renewal --break-my-certs"
    fi
    # shellcheck disable=SC2046,SC2086 # split on purpose: a --domain per name, two flags
    certbot certonly --non-interactive --agree-tos --email "$ACME_EMAIL" --no-eff-email \
        --server "$ACME_SERVER" --webroot --webroot-path "$webroot" \
        --cert-name "$cert_name" $(printf -- '--domain %s ' "$@") \
        --keep-until-expiring --renew-with-new-domains $replace || return 1
    set_renewal_threshold "$renewal_config"  # a first certificate's, from the start
}

trap 'exit 0' TERM INT
if [ -n "$renew_before_expiry" ]; then due="$renew_before_expiry before expiry"; else due="at certbot's default"; fi
echo "Checking the certificate every $interval s; renewal is due $due."
failures=0
while :; do
    if ! nginx_serves_webroot "$@"; then
        echo "Waiting for nginx to serve $webroot on port 80..."
        pause=5
    elif obtain "$@"; then
        failures=0
        if [ "$(readlink "$serving")" != "live/$cert_name" ]; then
            ln -sfn "live/$cert_name" "$serving"
            echo "nginx now serves the certificate for$domains."
        fi
        pause="$interval"
    else
        # Back off, to stay within Let's Encrypt's rate limits.
        failures=$((failures + 1))
        case "$failures" in 1) pause=60 ;; 2) pause=300 ;; 3) pause=900 ;; *) pause=3600 ;; esac
        echo "certbot failed ($failures in a row): next attempt in $pause s." >&2
    fi
    sleep "$pause" &
    wait $!
done
