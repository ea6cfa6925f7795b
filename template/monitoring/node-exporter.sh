#!/bin/sh
# node-exporter's entrypoint (compose.monitoring.yaml): every minute, writes
# the figures the host's own collectors do not have to its textfile
# collector's directory, then runs node_exporter with the arguments given.
#
#   backup_newest_timestamp_seconds    the newest dump in backups/ (0: none)
#   backup_offsite_newest_timestamp_seconds
#                                      the newest snapshot sent offsite (only
#                                      with offsite backups, once one is made)
#   tls_certificate_not_after_seconds  when the certificate nginx serves
#                                      expires (only with HTTPS)
#
# Plain sh and the tools of the image's busybox: no openssl there, so the
# expiry is read from the certificate's DER, where the validity is the first
# two times (RFC 5280), as UTCTime YYMMDDHHMMSSZ.
set -eu

textfiles=/tmp/textfile
backups=/project/backups
certificate=/letsencrypt/serving/fullchain.pem
# The last offsite backup that succeeded: "STARTED SNAPSHOT" (server/offsite.sh).
offsite=$backups/.offsite-ok

newest_backup() {
    newest=0
    for dump in "$backups"/*.dump; do
        [ -f "$dump" ] || continue
        modified=$(stat -c %Y "$dump")
        [ "$modified" -le "$newest" ] || newest=$modified
    done
    echo "$newest"
}

certificate_not_after() {
    utc=$(awk '/-BEGIN CERTIFICATE-/ { inside = 1; next } /-END CERTIFICATE-/ { exit } inside' "$certificate" |
        base64 -d | tr -c '0-9Z' '\n' | grep -o '[0-9]\{12\}Z' | sed -n 2p)
    [ -n "$utc" ] || return 1
    date -u -d "$(echo "$utc" | sed 's/^\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)Z$/20\1-\2-\3 \4:\5:\6/')" +%s
}

write_metrics() {
    {
        echo "# HELP backup_newest_timestamp_seconds When the newest dump in backups/ was written (0: none)."
        echo "# TYPE backup_newest_timestamp_seconds gauge"
        echo "backup_newest_timestamp_seconds $(newest_backup)"
        if [ -s "$offsite" ] && read -r offsite_at _ <"$offsite"; then
            echo "# HELP backup_offsite_newest_timestamp_seconds When the newest offsite snapshot was started."
            echo "# TYPE backup_offsite_newest_timestamp_seconds gauge"
            echo "backup_offsite_newest_timestamp_seconds $offsite_at"
        fi
        if [ -s "$certificate" ] && not_after=$(certificate_not_after); then
            echo "# HELP tls_certificate_not_after_seconds When the HTTPS certificate nginx serves expires."
            echo "# TYPE tls_certificate_not_after_seconds gauge"
            echo "tls_certificate_not_after_seconds $not_after"
        fi
    } >"$textfiles/files.prom.tmp"
    # Renamed into place: the collector never reads a half-written file.
    mv "$textfiles/files.prom.tmp" "$textfiles/files.prom"
}

mkdir -p "$textfiles"
write_metrics
(
    while sleep 60; do
        write_metrics || echo "node-exporter.sh: could not write $textfiles/files.prom" >&2
    done
) &
exec /bin/node_exporter "$@"
