# shellcheck shell=bash
# Offsite, encrypted copies of the backups, with restic: each nightly backup
# (the dump and the media archive of data.sh) goes as one snapshot to the
# repository .env names in restic's own variables (RESTIC_REPOSITORY,
# RESTIC_PASSWORD, and the backend's credentials: AWS_*, B2_*...), pruned by
# OFFSITE_KEEP_*; verify-backup restores the latest into a scratch database
# and compares its rows with the live ones. restic runs in its official image:
# nothing to install on the server. Sourced by scripts/server.sh; defines
# functions only.

# The one place the image is pinned.
RESTIC_IMAGE=restic/restic:0.18.1

# The variables restic and its backends read, passed on from .env by name.
OFFSITE_VARIABLES='RESTIC_[A-Z0-9_]+|AWS_[A-Z0-9_]+|B2_[A-Z0-9_]+|AZURE_[A-Z0-9_]+|GOOGLE_[A-Z0-9_]+|OS_[A-Z0-9_]+|ST_[A-Z0-9_]+'

# The snapshot's files, whatever the backup's own names: each snapshot holds
# the same two paths, so that restic's deduplication finds their parents.
OFFSITE_DIR=/backup

# What the last offsite backups did, for status: the newest success (its
# time, epoch seconds, and snapshot id) and, when the last attempt failed,
# when and why.
OFFSITE_OK=backups/.offsite-ok
OFFSITE_FAILED=backups/.offsite-failed

offsite_on() { [ -n "$(env_plain RESTIC_REPOSITORY)" ]; }

# The repository, as messages name it: without a password in its URL.
repository() { env_plain RESTIC_REPOSITORY | sed -E 's#(//)[^/@]+@#\1***@#'; }

# A .env value without the quotes compose allows around it.
env_plain() {
    local value
    value=$(env_value "$1")
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
    printf '%s' "$value"
}

# run_restic [DOCKER_OPTION...] -- RESTIC_ARG...: restic in a one-off
# container, as the deploy user (the files it writes are theirs), with the
# host's network (the repository is reached as from the server itself) and
# .env's variables in its environment by name, never on a command line.
# OFFSITE_TIMEOUT (seconds, 3 hours by default; RESTIC_SECONDS overrides it
# for one call) bounds a run: restic retries an unreachable repository for
# 15 minutes.
run_restic() {
    local options=() name seconds=${RESTIC_SECONDS:-} status=0 container
    seconds=${seconds:-$(env_plain OFFSITE_TIMEOUT | grep -x '[1-9][0-9]*' || echo 10800)}
    container=$PROJECT-restic-$$-$RANDOM
    while [ "$1" != -- ]; do options+=("$1") && shift; done
    shift
    for name in $(grep -oE "^($OFFSITE_VARIABLES)=" .env | tr -d = | sort -u); do
        export "$name=$(env_plain "$name")"
        options+=(-e "$name")
    done
    # SFTP logs in with the deploy user's SSH key and known hosts.
    if [[ $(env_plain RESTIC_REPOSITORY) == sftp:* ]]; then
        options+=(-v "$HOME/.ssh:/home/restic/.ssh:ro" -e HOME=/home/restic)
    fi
    mkdir -p .cache/restic
    timeout --kill-after 10 "$seconds" docker run --rm -i --name "$container" --network host \
        --user "$(id -u):$(id -g)" -v "$APP_DIR/.cache/restic:/cache" -e RESTIC_CACHE_DIR=/cache \
        "${options[@]}" "$RESTIC_IMAGE" "$@" || status=$?
    # A timed-out client may leave its container behind.
    [ "$status" -lt 124 ] || docker rm --force "$container" >/dev/null 2>&1 || true
    return "$status"
}

# restic_failure STATUS: why restic failed, in one line, from its exit
# status (restic 0.17 and later) and what it printed (on standard input).
restic_failure() {
    local status=$1 said
    said=$(grep -v '^\s*$' | tail -n 1)
    case $status in
        10) echo "no restic repository at $(repository) (the nightly backup creates it)" ;;
        11) echo "the restic repository is locked by another run: try again later (restic unlock removes a stale lock)" ;;
        12) echo "RESTIC_PASSWORD in .env does not open the repository at $(repository)" ;;
        124 | 137) echo "no answer from the restic repository at $(repository) in time: is it reachable from the server?" ;;
        *) echo "restic failed (exit status $status): ${said:-no output}" ;;
    esac
}

# offsite ARG...: run_restic with no extra mounts, and its output; on
# failure, the reason in one line instead.
offsite() {
    local output status=0
    output=$(run_restic -- "$@" 2>&1) || status=$?
    if [ "$status" -ne 0 ]; then
        restic_failure "$status" <<<"$output"
        return 1
    fi
    printf '%s\n' "$output"
}

# offsite_open [create]: the repository opened, or with create made when
# there is none yet (restic exits 10 then): a wrong password is never taken
# for a missing repository. A repository that does not answer in
# OFFSITE_CONNECT_TIMEOUT seconds (60) fails here, rather than after
# restic's 15 minutes of retries. Prints progress; the reason last on
# failure.
offsite_open() {
    local output status=0 seconds
    seconds=$(env_plain OFFSITE_CONNECT_TIMEOUT | grep -x '[1-9][0-9]*' || echo 60)
    output=$(RESTIC_SECONDS=$seconds run_restic -- cat config 2>&1) || status=$?
    [ "$status" -ne 0 ] || return 0
    if [ "$status" -eq 10 ] && [ "${1:-}" = create ]; then
        output=$(offsite init) || {
            echo "${output##*$'\n'}"
            return 1
        }
        step "offsite: created the repository, encrypted with RESTIC_PASSWORD (without it the backups are lost)"
        return 0
    fi
    restic_failure "$status" <<<"$output"
    return 1
}

# offsite_backup DUMP MEDIA: one snapshot of the backup just made (MEDIA may
# be missing), then the retention policy, pruned. Records the outcome for
# status, and fails with its reason.
offsite_backup() {
    local dump=$1 media=$2 started output snapshot mounts
    started=$(date +%s)
    mounts=(-v "$APP_DIR/$dump:$OFFSITE_DIR/database.dump:ro")
    [ ! -f "$media" ] || mounts+=(-v "$APP_DIR/$media:$OFFSITE_DIR/media.tar:ro")
    step "offsite: to $(repository)"
    if ! output=$(offsite_open create); then
        offsite_failed "${output##*$'\n'}"
    fi
    [ -z "$output" ] || printf '%s\n' "$output"
    local status=0
    output=$(run_restic "${mounts[@]}" -- backup --json --host "$PROJECT" --tag "$PROJECT" "$OFFSITE_DIR" 2>&1) ||
        status=$?
    [ "$status" -eq 0 ] || offsite_failed "$(restic_failure "$status" <<<"$output")"
    snapshot=$(sed -n 's/.*"snapshot_id": *"\([0-9a-f]*\)".*/\1/p' <<<"$output" | tail -n 1)
    [ -n "$snapshot" ] || offsite_failed "restic made no snapshot: ${output##*$'\n'}"
    printf '%s %s\n' "$started" "$snapshot" >"$OFFSITE_OK"
    rm -f "$OFFSITE_FAILED"
    step "offsite: snapshot ${snapshot:0:8}"
    # shellcheck disable=SC2046 # the policy's options, one word each
    if ! output=$(offsite forget --host "$PROJECT" --tag "$PROJECT" --prune $(offsite_policy)); then
        offsite_failed "the snapshot is made, but pruning failed: ${output##*$'\n'}"
    fi
    step "offsite: pruned, keeping $(offsite_policy | paste -d ' ' - - | sed 's/^--keep-\(.*\) \(.*\)$/\2 \1/' | paste -sd ',' - | sed 's/,/, /g')"
}

# The retention policy, as restic forget's options: OFFSITE_KEEP_DAILY (7),
# _WEEKLY (4) and _MONTHLY (6) in .env.
offsite_policy() {
    local period default count
    for period in daily:7 weekly:4 monthly:6; do
        default=${period#*:} period=${period%:*}
        count=$(env_plain "OFFSITE_KEEP_${period^^}")
        count=${count:-$default}
        positive "$count" || die "OFFSITE_KEEP_${period^^} needs a number of snapshots, at least 1"
        printf -- '--keep-%s\n%s\n' "$period" "$count"
    done
}

# offsite_failed REASON: recorded for status and the failure hook, then stop.
offsite_failed() {
    printf '%s %s\n' "$(date +%s)" "$1" >"$OFFSITE_FAILED"
    die "offsite backup failed: $1"
}

# offsite_fetch SNAPSHOT FILE: the snapshot's dump into FILE, and its media
# archive beside it (FILE's NAME.media.tar) when it has one. SNAPSHOT is an
# id, or latest (this project's newest).
offsite_fetch() {
    local snapshot=$1 file=$2 listing
    listing=$(offsite_open) || die "${listing##*$'\n'}: nothing changed"
    listing=$(offsite ls --host "$PROJECT" --tag "$PROJECT" "$snapshot" "$OFFSITE_DIR") ||
        die "${listing##*$'\n'}: nothing changed"
    grep -qx "$OFFSITE_DIR/database.dump" <<<"$listing" || die "snapshot $snapshot holds no database dump"
    (umask 077 && mkdir -p "$(dirname "$file")")
    fetch_file "$snapshot" database.dump "$file"
    if grep -qx "$OFFSITE_DIR/media.tar" <<<"$listing"; then
        fetch_file "$snapshot" media.tar "${file%.dump}.media.tar"
    fi
}

fetch_file() {
    local output status=0
    output=$( (umask 077 && run_restic -- dump --host "$PROJECT" --tag "$PROJECT" "$1" "$OFFSITE_DIR/$2" >"$3.partial") 2>&1) ||
        status=$?
    if [ "$status" -ne 0 ]; then
        rm -f "$3.partial"
        die "fetching $2 from snapshot $1 failed: $(restic_failure "$status" <<<"$output")"
    fi
    mv "$3.partial" "$3"
}

# verify-backup: the restore drill, weekly by timer. restic check reads the
# repository's structure; then the newest backup (the latest snapshot, or
# without offsite the newest dump in backups/) is restored into a scratch
# database beside the live one, and each table's rows are counted in both.
# Fails when a step fails or a live table is missing from the backup; other
# differences are reported only: rows written since the backup differ.
cmd_verify_backup() {
    project_dir
    [ -n "$(containers db running)" ] || die "the database is not running"
    local file output scratch
    scratch=$(env_value POSTGRES_DB)_verify
    if offsite_on; then
        step "restic check: the repository's structure, at $(repository)"
        output=$(offsite_open) || die "${output##*$'\n'}"
        output=$(offsite check) || die "restic check failed: ${output##*$'\n'}"
        printf '%s\n' "$output" | tail -n 1 | indent
        file=backups/.verify/latest.dump
        rm -rf backups/.verify
        step "fetching the latest snapshot"
        offsite_fetch latest "$file"
    else
        file=$(find backups -maxdepth 1 -name "$PROJECT-*.dump" | sort | tail -n 1)
        [ -n "$file" ] || die "no backup to verify in $APP_DIR/backups: run scripts/backup first"
    fi
    if [ -f "${file%.dump}.media.tar" ]; then
        tar -tf "${file%.dump}.media.tar" >/dev/null 2>&1 ||
            die "$(basename "${file%.dump}.media.tar") does not read whole: the uploaded files' archive is damaged"
        step "uploaded files: $(tar -tf "${file%.dump}.media.tar" | grep -vc '/$') in the archive, which reads whole"
    fi
    step "restoring $(basename "$file") into a scratch database, $scratch"
    if ! output=$(restore_scratch "$scratch" <"$file" 2>&1); then
        drop_scratch "$scratch"
        rm -rf backups/.verify
        die "the backup does not restore: ${output##*$'\n'}"
    fi
    local live backup
    live=$(row_counts "$(env_value POSTGRES_DB)")
    backup=$(row_counts "$scratch")
    drop_scratch "$scratch"
    rm -rf backups/.verify
    compare_counts "$live" "$backup"
}

db_shell() { db_exec sh -c "$1" sh "${@:2}"; }

# shellcheck disable=SC2016 # expanded in the container
restore_scratch() {
    local script='dropdb --if-exists -U "$POSTGRES_USER" "$1" && createdb -U "$POSTGRES_USER" "$1"'
    script+=' && pg_restore --no-owner --exit-on-error -U "$POSTGRES_USER" -d "$1"'
    db_shell "$script" "$1"
}

# shellcheck disable=SC2016 # expanded in the container
drop_scratch() { db_shell 'dropdb --if-exists -U "$POSTGRES_USER" "$1"' "$1" || true; }

# row_counts DATABASE: "schema.table count" per table, counted exactly.
row_counts() {
    # shellcheck disable=SC2016 # expanded in the container
    db_shell 'psql -U "$POSTGRES_USER" -d "$1" -q -tA -F " " -v ON_ERROR_STOP=1' "$1" <<'SQL'
SELECT table_schema || '.' || table_name,
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name),
                                            false, true, '')))[1]::text
FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1;
SQL
}

# compare_counts LIVE BACKUP: one line per table; fails when a live table is
# not in the backup.
compare_counts() {
    local report
    report=$(join -a 1 -a 2 -e - -o 0,1.2,2.2 <(sort <<<"$1") <(sort <<<"$2") | awk '
        { state = $2 == $3 ? "same" : $3 == "-" ? "MISSING from the backup" : $2 == "-" ? "only in the backup" : "differs (written since the backup?)" }
        { printf "%-40s live %8s  backup %8s  %s\n", $1, $2, $3, state }')
    printf '%s\n' "$report" | indent
    local tables missing differ
    tables=$(grep -c . <<<"$report" || true)
    missing=$(grep -c 'MISSING' <<<"$report" || true)
    differ=$(grep -c 'differs\|only in' <<<"$report" || true)
    [ "$missing" -eq 0 ] || die "the backup lacks $missing of the $tables live tables"
    if [ "$differ" -eq 0 ]; then
        step "verified: the backup restores, and its $tables tables hold as many rows as the live ones"
    else
        step "verified: the backup restores; $differ of its $tables tables differ from the live ones (rows written since)"
    fi
}

# provision_backup_hook PROJECT USER APP_DIR: the backup timers' OnFailure=
# unit, which runs backup-failed (provision.sh calls it, as root).
provision_backup_hook() {
    if put_file "/etc/systemd/system/$1-backup-failed@.service" 644 root:root <<EOF; then
[Unit]
Description=Report that %i failed

[Service]
Type=oneshot
User=$2
ExecStart=$3/scripts/server.sh backup-failed %i
EOF
        systemctl daemon-reload
        changed "$1-backup-failed@.service, the backup timers' OnFailure= hook"
    else
        unchanged "$1-backup-failed@.service, the backup timers' OnFailure= hook"
    fi
}

# backup-failed UNIT: the backup timers' OnFailure= hook (provision.sh).
# Tells BACKUP_FAILURE_WEBHOOK (a POST of {"text": ...}, which Slack,
# Mattermost and most chats take), BACKUP_FAILURE_EMAIL through EMAIL_URL,
# and with the monitoring overlay Alertmanager (a BackupFailed alert, routed
# like the others). Fails when nobody could be told.
cmd_backup_failed() {
    project_dir
    local unit=${1:-$PROJECT-backup.service} message told=() failed
    message="$unit failed on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC')"
    # The offsite step's reason, when it is this run's.
    if [ -f "$OFFSITE_FAILED" ] && [ "$(cut -d ' ' -f 1 "$OFFSITE_FAILED")" -ge $(($(date +%s) - 6 * 3600)) ]; then
        message+=": $(cut -d ' ' -f 2- "$OFFSITE_FAILED")"
    fi
    message+=" (journalctl -u $unit says why)"
    say "$message"
    if [ -n "$(env_plain BACKUP_FAILURE_WEBHOOK)" ]; then
        if curl --silent --show-error --fail --max-time 30 --header 'Content-Type: application/json' \
            --data "{\"text\": $(json_string "$message")}" "$(env_plain BACKUP_FAILURE_WEBHOOK)"; then
            told+=(BACKUP_FAILURE_WEBHOOK)
        else
            warn "BACKUP_FAILURE_WEBHOOK did not take the message"
        fi
    fi
    if [ -n "$(env_plain BACKUP_FAILURE_EMAIL)" ]; then
        if failed=$(mail_failure "$message" 2>&1); then
            told+=("$(env_plain BACKUP_FAILURE_EMAIL)")
        else
            warn "no mail to BACKUP_FAILURE_EMAIL: ${failed##*$'\n'}"
        fi
    fi
    if compose config --services 2>/dev/null | grep -qx alertmanager; then
        local alert="[{\"labels\": {\"alertname\": \"BackupFailed\", \"severity\": \"critical\","
        alert+=" \"unit\": $(json_string "$unit")}, \"annotations\": {\"summary\": $(json_string "$message")}}]"
        if compose exec -T alertmanager wget -q -O /dev/null --header 'Content-Type: application/json' \
            --post-data "$alert" http://127.0.0.1:9093/api/v2/alerts; then
            told+=(Alertmanager)
        else
            warn "Alertmanager did not take the BackupFailed alert"
        fi
    fi
    [ ${#told[@]} -gt 0 ] ||
        die "nobody was told: set BACKUP_FAILURE_WEBHOOK or BACKUP_FAILURE_EMAIL in $APP_DIR/.env"
    step "told ${told[*]}"
}

json_string() { printf '"%s"' "$(sed 's/\\/\\\\/g; s/"/\\"/g' <<<"$1" | tr -d '\000-\037')"; }

# mail_failure MESSAGE: mailed through EMAIL_URL (smtp://, smtp+tls:// for
# STARTTLS, smtp+ssl:// for TLS; user and password percent-encoded) with
# curl, from DEFAULT_FROM_EMAIL's address (else backup@ the server's name).
mail_failure() {
    local url scheme rest credentials="" address from to tls=()
    url=$(env_plain EMAIL_URL)
    [[ $url =~ ^(smtp|smtp\+tls|smtp\+ssl)://(.+)$ ]] || die "EMAIL_URL is not an smtp://, smtp+tls:// or smtp+ssl:// URL"
    scheme=${BASH_REMATCH[1]} rest=${BASH_REMATCH[2]}
    if [[ $rest == *@* ]]; then credentials=${rest%@*} rest=${rest##*@}; fi
    case $scheme in
        smtp+tls) address=smtp://$rest tls=(--ssl-reqd) ;;
        smtp+ssl) address=smtps://$rest ;;
        *) address=smtp://$rest ;;
    esac
    from=$(env_plain DEFAULT_FROM_EMAIL | sed 's/.*<\(.*\)>.*/\1/')
    from=${from:-backup@$(hostname -f 2>/dev/null || hostname)}
    to=$(env_plain BACKUP_FAILURE_EMAIL)
    # The password reaches curl on its standard input, never its command line.
    printf 'user = "%s"\n' "$(printf '%b' "${credentials//%/\\x}" | sed 's/\\/\\\\/g; s/"/\\"/g')" |
        curl --silent --show-error --max-time 60 "${tls[@]}" ${credentials:+--config -} \
            --url "${address%/}" --mail-from "$from" --mail-rcpt "$to" --upload-file <(
            printf 'From: %s\r\nTo: %s\r\nSubject: %s backup failed\r\nDate: %s\r\n\r\n%s\r\n' \
                "$from" "$to" "$PROJECT" "$(date -R)" "$1"
        )
}
