#!/usr/bin/env bash
# The server side of scripts/provision, deploy, rollback, backup, restore,
# logs and status. Those run on your laptop (or in CI) and call this file
# over SSH; scripts/deploy ships it to /srv/<project>/scripts/ with its
# modules in scripts/server/, and the daily backup timer runs it there too.
# One module per concern (docs/deploy.md, "What runs where"):
#
#   server/common.sh      output, the project's directory, compose, the lock
#   server/release.sh     deploy and rollback: the release step, the switch
#   server/nginx.sh       nginx's configuration and image, without a gap
#   server/incoming.sh    a deploy's stream from scripts/deploy, run detached
#   server/images.sh      images: missing ones, tag, pull, newer builds
#   server/data.sh        backup and restore
#   server/offsite.sh     offsite backups with restic, the restore drill
#   server/status.sh      status and releases (read-only)
#   server/provision.sh   provision, as root (with server/hardening.sh)
#   server/swarm.sh       deploy, rollback and status on a Docker Swarm
#                         (DEPLOY_MODE=swarm in .env, compose.swarm.yaml)
#   server/jobs.sh        the workers and the scheduler, in projects that
#                         have them: they move with each release
#
# DEPLOY_TRACE=1 prints every command as it runs (bash's set -x); the laptop
# scripts pass it on.
set -Eeuo pipefail

SERVER_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for module in release-id common release nginx incoming images data offsite status provision engine hardening swarm; do
    # shellcheck source=/dev/null
    . "$SERVER_HOME/server/$module.sh"
done
if [ -f "$SERVER_HOME/server/jobs.sh" ]; then
    # shellcheck source=/dev/null
    . "$SERVER_HOME/server/jobs.sh"
fi

usage() {
    cat <<EOF
Usage: server.sh COMMAND [ARG...]

The server side of the deploy scripts: they run it over SSH as
/srv/<project>/scripts/server.sh. You can run it there too.

  provision --project NAME ...  as root: set the server up (scripts/provision)
  deploy RELEASE [OPTIONS]      switch to the image <project>:RELEASE, already here
  rollback [RELEASE]            back to the previous release (or RELEASE)
  receive STAGE RELEASE ...     scripts/deploy's stream: staged files, images
  releases                      the releases that went live (releases.log)
  missing-images                images compose.yaml needs that are not here
  tag IMAGE RELEASE             name IMAGE <project>:RELEASE
  pull IMAGE RELEASE            pull IMAGE, then name it <project>:RELEASE
  refresh-images [--postgres]   newer builds of nginx, certbot (and postgres)
  backup                        pg_dump and the uploaded files into backups/ (BACKUP_KEEP, 14)
  restore FILE                  FILE (in backups/) into the database, its .media.tar into media
  restore --from-offsite [ID]   the same, from restic's latest snapshot (or ID)
  verify-backup                 restic check, then the newest backup restored into a scratch database
  backup-failed UNIT            tell BACKUP_FAILURE_WEBHOOK/_EMAIL, Alertmanager (OnFailure= hook)
  status                        release, health, what nginx serves
  drain NODE | activate NODE    on a swarm: move the app off NODE without a gap, or back
  compose ARGS...               docker compose, as the deploy scripts run it

Set DEPLOY_TRACE=1 to print each command as it runs.
EOF
}

main() {
    COMMAND=${1:-help}
    [ $# -eq 0 ] || shift
    [ "${DEPLOY_TRACE:-}" != 1 ] || set -x
    # Any failure nobody expected still ends with a one-line reason.
    trap 'unexpected $? "${BASH_SOURCE[0]##*/}:$LINENO" "$BASH_COMMAND"' ERR
    # Nothing this writes (releases.log, backups) is for other users to read.
    umask 027
    case $COMMAND in
        provision) cmd_provision "$@" ;;
        deploy) cmd_deploy "$@" ;;
        rollback) cmd_rollback "$@" ;;
        receive) cmd_receive "$@" ;;
        # The detached halves of receive, deploy and rollback.
        apply) cmd_apply "$@" ;;
        go-live) cmd_go_live "$@" ;;
        releases) cmd_releases ;;
        missing-images) cmd_missing_images ;;
        tag) cmd_tag "$@" ;;
        pull) cmd_pull "$@" ;;
        refresh-images) cmd_refresh_images "$@" ;;
        backup) cmd_backup "$@" ;;
        restore) cmd_restore "$@" ;;
        verify-backup) cmd_verify_backup ;;
        backup-failed) cmd_backup_failed "$@" ;;
        status) cmd_status ;;
        drain) cmd_drain "$@" ;;
        activate) cmd_activate "$@" ;;
        compose)
            project_dir
            compose "$@"
            ;;
        help | -h | --help) usage ;;
        *) usage_error "unknown command $COMMAND (see server.sh --help)" ;;
    esac
}

# Sourcing this file (the unit tests do) defines everything and runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
