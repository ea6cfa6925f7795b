#!/bin/sh
# HTTPS for nginx, mounted by compose.tls.yaml as
# /docker-entrypoint.d/40-https.sh: the official image's entrypoint runs it
# after rendering templates/ and before starting nginx (see docs/https.md).
#
# 1. Renders the HTTPS settings into nginx's configuration (again at each
#    certificate change: HSTS waits for an issued certificate).
# 2. Waits for the certificate the certbot service provides.
# 3. Starts a watcher that reloads nginx whenever that certificate changes:
#    on first issuance and on each renewal. `nginx -s reload` starts new
#    workers with the new certificate while the old ones finish the requests
#    and connections they have, so no request is dropped.
set -eu

certificate=/etc/letsencrypt/serving/fullchain.pem
# Seconds between two looks at the certificate: a cheap checksum of a small file.
interval="${CERT_CHECK_INTERVAL:-30}"

# Redirects name the https port only when it is not the default.
if [ "$HTTPS_PORT" = 443 ]; then HTTPS_REDIRECT_PORT=""; else HTTPS_REDIRECT_PORT=":$HTTPS_PORT"; fi
export HTTPS_REDIRECT_PORT

# HSTS pins a certificate browsers trust: none while certbot's self-signed
# placeholder serves (max-age=0), HSTS_MAX_AGE once one was issued.
render() {
    if [ "$(readlink /etc/letsencrypt/serving)" = placeholder ]; then HSTS_SECONDS=0; else HSTS_SECONDS=$HSTS_MAX_AGE; fi
    export HSTS_SECONDS
    # shellcheck disable=SC2016 # envsubst takes the names, and fills in only these
    variables='${HTTPS_PORT} ${HTTPS_REDIRECT_PORT} ${HSTS_SECONDS}'
    envsubst "$variables" < /etc/nginx/https/https.conf.template > /etc/nginx/conf.d/https.conf
    mkdir -p /etc/nginx/site.d
    envsubst "$variables" < /etc/nginx/https/site.conf.template > /etc/nginx/site.d/https.conf
}
render

# compose.tls.yaml starts nginx once certbot is healthy, which it is when a
# certificate exists; this covers nginx being started on its own.
waited=0
until [ -s "$certificate" ]; do
    if [ "$waited" -ge 60 ]; then
        echo "$0: no certificate at $certificate after 60 s: is the certbot service running?" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done

watch_certificate() {
    current="$(cksum < "$certificate")"
    while sleep "$interval"; do
        latest="$(cksum < "$certificate" 2>/dev/null)" || continue
        [ "$latest" = "$current" ] && continue
        current="$latest"
        echo "$0: the certificate changed: reloading nginx"
        render
        # A failed reload (say, a broken edit to the configuration) leaves
        # the running nginx as it was; the next change tries again.
        nginx -s reload || echo "$0: nginx -s reload failed" >&2
    done
}
watch_certificate &
