# shellcheck shell=bash
# The database's backups: pg_dump into backups/ (on demand, and by the daily
# systemd timer), and restoring one. Sourced by scripts/server.sh; defines
# functions only.

# backup [--label TEXT]: pg_dump in its custom format (compressed, and
# pg_restore can pick from it) into backups/, keeping the newest BACKUP_KEEP
# dumps (14 by default). Prints the dump's path last, on a line of its own.
cmd_backup() {
    local label="" keep=${BACKUP_KEEP:-14}
    if [ "${1:-}" = --label ]; then
        [ $# -ge 2 ] || die "--label needs a value"
        label=-$2
    fi
    positive "$keep" || die "BACKUP_KEEP needs a number of dumps, at least 1"
    project_dir
    [ -n "$(containers db running)" ] || die "the database is not running"
    local file
    file=backups/$PROJECT-$(date -u +%Y%m%dT%H%M%SZ)$label.dump
    dump_database "$file"
    prune_dumps "$keep"
    step "backup $APP_DIR/$file ($(du -h "$file" | cut -f1))"
    echo "$APP_DIR/$file"
}

dump_database() {
    local file=$1
    (umask 077 && mkdir -p backups)
    # shellcheck disable=SC2016 # expanded in the container
    if ! (umask 077 && compose exec -T db sh -c 'pg_dump --format=custom --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"' >"$file.partial"); then
        rm -f "$file.partial"
        die "pg_dump failed"
    fi
    mv "$file.partial" "$file"
}

# Keep the newest KEEP dumps of backups/ (their names sort by time).
prune_dumps() {
    local keep=$1 old
    find backups -maxdepth 1 -name "$PROJECT-*.dump" -printf '%f\n' | sort -r | tail -n "+$((keep + 1))" |
        while read -r old; do rm -f "backups/$old"; done
}

# restore FILE: replace the database's contents with a dump, in one
# transaction: if any of it fails, nothing changes. Requests wait while it
# runs. FILE is checked whole first; then a safety backup of the current data
# is taken. An upload (scripts/restore puts it in backups/uploaded/) joins
# the other dumps once restored, and is removed if it is refused, so that a
# bad file never counts as a backup.
cmd_restore() {
    local file=${1:-} uploaded=false
    [ -n "$file" ] || die "name the dump to restore"
    project_dir
    [[ $file == /* ]] || file=$APP_DIR/backups/$file
    [[ $file != "$APP_DIR/backups/uploaded/"* ]] || uploaded=true
    [ -f "$file" ] || die "no such dump on the server: $file"
    lock
    step "checking $(basename "$file"): pg_restore reads all of it"
    if ! check_dump "$file"; then
        ! $uploaded || rm -f "$file"
        die "$(basename "$file") is not a whole pg_dump custom-format archive (truncated or another format): nothing changed"
    fi
    step "safety backup of the current data first"
    cmd_backup --label pre-restore | indent
    step "restoring $(basename "$file") into database $(env_value POSTGRES_DB)"
    # shellcheck disable=SC2016 # expanded in the container
    if ! compose exec -T -e PGOPTIONS='-c lock_timeout=60s' db sh -c \
        'pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"' \
        <"$file" 2>&1 | indent; then
        ! $uploaded || rm -f "$file"
        die "pg_restore failed: the database is unchanged"
    fi
    if $uploaded; then
        # Named like the server's own dumps, so that their retention covers it.
        mv "$file" "backups/$PROJECT-$(date -u +%Y%m%dT%H%M%SZ)-uploaded.dump"
    fi
    step "restored $(basename "$file")"
}

# Whether FILE is a complete custom-format archive: pg_restore reads every
# entry and writes the SQL nowhere. A truncated dump fails here, before the
# safety backup and the restore.
check_dump() {
    compose exec -T db pg_restore --file=/dev/null <"$1" >/dev/null 2>&1
}
