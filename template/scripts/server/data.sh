# shellcheck shell=bash
# Backups of the data: the database (pg_dump) and the uploaded files (a tar
# of the media volume), into backups/ on demand and by the daily systemd
# timer, and restoring them. Sourced by scripts/server.sh; defines functions
# only.

# Where the app container mounts the media volume (compose.yaml).
MEDIA_DIR=/srv/media

# backup [--label TEXT]: pg_dump in its custom format (compressed, and
# pg_restore can pick from it) into backups/NAME.dump, and the media volume
# into backups/NAME.media.tar beside it, keeping the newest BACKUP_KEEP
# backups (14 by default); then, when .env names a restic repository, both
# as one offsite snapshot (offsite.sh). Labelled backups (a restore's safety
# backup) stay on the server. Prints the dump's path last, on a line of its
# own.
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
    archive_media "${file%.dump}.media.tar"
    prune_dumps "$keep"
    step "backup $APP_DIR/$file ($(du -h "$file" | cut -f1))"
    step "uploaded files $APP_DIR/${file%.dump}.media.tar ($(du -h "${file%.dump}.media.tar" | cut -f1))"
    if [ -z "$label" ] && offsite_on; then
        offsite_backup "$file" "${file%.dump}.media.tar"
    fi
    echo "$APP_DIR/$file"
}

# pre_migration_dump RELEASE CURRENT: before RELEASE's release step runs
# its migrations, a dump of the database alone (migrations leave the
# uploaded files alone), named after RELEASE: scripts/rollback --with-data
# restores it when going back to CURRENT. PRE_MIGRATION_BACKUP=off in .env
# skips it.
pre_migration_dump() {
    [ "$(env_value PRE_MIGRATION_BACKUP)" != off ] || return 0
    [ -n "$2" ] && [ -n "$(containers db running)" ] || return 0
    local file
    file=backups/$PROJECT-$(date -u +%Y%m%dT%H%M%SZ)-before-migrations-of-$1.dump
    dump_database "$file"
    step "dumped the database first, for scripts/rollback --with-data: $file ($(du -h "$file" | cut -f1))"
}

dump_database() {
    local file=$1
    (umask 077 && mkdir -p backups)
    # shellcheck disable=SC2016 # expanded in the container
    if ! (umask 077 && db_exec sh -c 'pg_dump --format=custom --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"' >"$file.partial"); then
        rm -f "$file.partial"
        die "pg_dump failed"
    fi
    mv "$file.partial" "$file"
}

# The media volume as a tar archive, read by a one-off container of the app's
# image (as the app's user, the files' owner), so that it works whatever
# state the app is in.
archive_media() {
    local file=$1
    if ! (umask 077 && media_run tar -C "$MEDIA_DIR" --exclude ./.restoring -cf - . >"$file.partial"); then
        rm -f "$file.partial"
        die "archiving the uploaded files (the media volume) failed: only the database's dump was made"
    fi
    mv "$file.partial" "$file"
}

# media_run COMMAND [ARG...]: run a command beside the media volume, in a one-off
# container of the app's service; on a swarm, of the release's image with
# this node's media volume (docs/scaling.md, "Backups and logs").
media_run() {
    if swarm_mode; then
        docker run --rm -i --network none --volume "${PROJECT}_media:$MEDIA_DIR" \
            --entrypoint "$1" "$PROJECT:$(current_release)" "${@:2}"
    else
        compose run --rm --no-deps -T --entrypoint "$1" app "${@:2}"
    fi
}

# db_exec [-e NAME=VALUE]... COMMAND [ARG...]: run a command in the
# database's container, fed this function's standard input.
db_exec() {
    local options=() container
    while [ "${1:-}" = -e ]; do options+=(-e "$2") && shift 2; done
    if swarm_mode; then
        container=$(containers db running | head -n 1)
        [ -n "$container" ] || die "the database runs on another node: run this on the one labelled $PROJECT.db"
        docker exec -i ${options[@]+"${options[@]}"} "$container" "$@"
    else
        compose exec -T ${options[@]+"${options[@]}"} db "$@"
    fi
}

# Keep the newest KEEP backups of backups/ (their names sort by time): each
# dump, and the archive of uploaded files made with it.
prune_dumps() {
    local keep=$1 old
    find backups -maxdepth 1 -name "$PROJECT-*.dump" -printf '%f\n' | sort -r | tail -n "+$((keep + 1))" |
        while read -r old; do rm -f "backups/$old" "backups/${old%.dump}.media.tar"; done
}

# restore FILE: replace the database's contents with a dump, in one
# transaction: if any of it fails, nothing changes. Requests wait while it
# runs. When the dump has its archive of uploaded files beside it
# (NAME.media.tar), the media volume's contents are replaced next; without
# one, the uploaded files stay as they are. Both files are checked whole
# first, then a safety backup of the current data is taken. An upload
# (scripts/restore puts it in backups/uploaded/) joins the other backups once
# restored, and is removed if it is refused, so that a bad file never counts
# as a backup.
cmd_restore() {
    local file=${1:-} uploaded=false media
    [ -n "$file" ] || die "name the dump to restore"
    project_dir
    if [ "$file" = --from-offsite ]; then
        # Fetched like an upload: it joins the backups only once restored.
        offsite_on || die "RESTIC_REPOSITORY is not set in $APP_DIR/.env: no offsite backups to restore from"
        [[ ${2:-latest} =~ ^(latest|[0-9a-f]{8,64})$ ]] || die "not a snapshot id: $2 (restic snapshots lists them)"
        file=$APP_DIR/backups/uploaded/$PROJECT-offsite-${2:-latest}.dump
        rm -f "$file" "${file%.dump}.media.tar"
        step "fetching snapshot ${2:-latest} from $(repository)"
        offsite_fetch "${2:-latest}" "$file"
    fi
    [[ $file == /* ]] || file=$APP_DIR/backups/$file
    [[ $file != "$APP_DIR/backups/uploaded/"* ]] || uploaded=true
    [ -f "$file" ] || die "no such dump on the server: $file"
    media=${file%.dump}.media.tar
    [ -f "$media" ] || media=""
    lock
    step "checking $(basename "$file"): pg_restore reads all of it"
    if ! check_dump "$file"; then
        refuse_restore $uploaded "$file" "$media" \
            "$(basename "$file") is not a whole pg_dump custom-format archive (truncated or another format): nothing changed"
    fi
    if [ -n "$media" ]; then
        step "checking $(basename "$media"): tar reads all of it"
        tar -tf "$media" >/dev/null 2>&1 || refuse_restore $uploaded "$file" "$media" \
            "$(basename "$media") is not a whole tar archive (truncated or another format): nothing changed"
    fi
    step "safety backup of the current data first"
    cmd_backup --label pre-restore | indent
    step "restoring $(basename "$file") into database $(env_value POSTGRES_DB)"
    # shellcheck disable=SC2016 # expanded in the container
    if ! db_exec -e PGOPTIONS='-c lock_timeout=60s' sh -c \
        'pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"' \
        <"$file" 2>&1 | indent; then
        refuse_restore $uploaded "$file" "$media" "pg_restore failed: the database is unchanged"
    fi
    if [ -z "$media" ]; then
        step "no $(basename "${file%.dump}.media.tar") beside it: the uploaded files stay as they are"
    else
        step "replacing the uploaded files with $(basename "$media")"
        if ! restore_media <"$media" 2>&1 | indent; then
            die "the database is restored, but not every uploaded file: run the same restore again"
        fi
    fi
    if $uploaded; then
        # Named like the server's own backups, so that their retention covers it.
        local name
        name=backups/$PROJECT-$(date -u +%Y%m%dT%H%M%SZ)-uploaded
        mv "$file" "$name.dump"
        [ -z "$media" ] || mv "$media" "$name.media.tar"
    fi
    step "restored $(basename "$file")"
}

# refuse_restore UPLOADED FILE MEDIA REASON: stop, removing the files of a
# refused upload.
refuse_restore() {
    ! "$1" || rm -f "$2" ${3:+"$3"}
    die "$4"
}

# The media volume's contents replaced with the archive on standard input:
# unpacked beside them first (into a dotfile directory, which nginx never
# serves), so that a broken stream leaves the old files in place.
restore_media() {
    # shellcheck disable=SC2016 # expanded in the container
    local script='set -e; cd "$1"; rm -rf .restoring; mkdir .restoring; tar -C .restoring -xf -'
    script+='; find . -mindepth 1 -maxdepth 1 ! -name .restoring -exec rm -rf {} +'
    script+='; find .restoring -mindepth 1 -maxdepth 1 -exec mv -t . {} +; rmdir .restoring'
    media_run sh -c "$script" sh "$MEDIA_DIR"
}

# Whether FILE is a complete custom-format archive: pg_restore reads every
# entry and writes the SQL nowhere. A truncated dump fails here, before the
# safety backup and the restore.
check_dump() {
    db_exec pg_restore --file=/dev/null <"$1" >/dev/null 2>&1
}
