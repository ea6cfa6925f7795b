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
# - Twice a day `certbot certonly --keep-until-expiring` renews the
#   certificate once it is due (a third of its lifetime left: about 30 days
#   for Let's Encrypt's 90-day certificates), and applies changed names or a
#   changed ACME_SERVER.
set -eu

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

obtain() {
    renewal_config="/etc/letsencrypt/renewal/$cert_name.conf"
    replace=""
    if [ -f "$renewal_config" ] && ! grep -qxF "server = $ACME_SERVER" "$renewal_config"; then
        echo "ACME_SERVER changed: replacing the certificate with one from $ACME_SERVER."
        replace="--force-renewal --break-my-certs"
    fi
    # shellcheck disable=SC2046,SC2086 # split on purpose: a --domain per name, two flags
    certbot certonly --non-interactive --agree-tos --email "$ACME_EMAIL" --no-eff-email \
        --server "$ACME_SERVER" --webroot --webroot-path "$webroot" \
        --cert-name "$cert_name" $(printf -- '--domain %s ' "$@") \
        --keep-until-expiring --renew-with-new-domains $replace
}

trap 'exit 0' TERM INT
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
        pause=43200
    else
        # Back off, to stay within Let's Encrypt's rate limits.
        failures=$((failures + 1))
        case "$failures" in 1) pause=60 ;; 2) pause=300 ;; 3) pause=900 ;; *) pause=3600 ;; esac
        echo "certbot failed ($failures in a row): next attempt in $pause s." >&2
    fi
    sleep "$pause" &
    wait $!
done
