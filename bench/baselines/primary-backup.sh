#!/bin/sh
# keepalived notify script of the baseline: the conntrack-tools manual's
# primary-backup sequence (conntrackd -c, -f, -R, -B on becoming primary;
# -t and -n on becoming backup; -t on fault), with two changes for the lab:
# the conntrackd config is an argument (one conntrackd per node namespace,
# each with its own socket), and every transition is appended with a
# nanosecond timestamp to an events file, which is how the benchmark reads
# the time of detection. Errors go to that file too (no syslog in the lab).
#
# usage: primary-backup.sh primary|backup|fault CONNTRACKD_CONF EVENTS_FILE
set -u
state="$1"
conf="$2"
events="$3"
ctd=/usr/sbin/conntrackd

note() {
    echo "$(date +%s.%N) $*" >>"$events"
}

run() {
    # $1: what the step does (for the events file); the rest: conntrackd flags.
    what="$1"
    shift
    if ! "$ctd" -C "$conf" "$@" >/dev/null 2>&1; then
        note "error $state: conntrackd $* ($what) failed"
    fi
}

note "enter $state"
case "$state" in
primary)
    run "commit the external cache into the kernel table" -c
    run "flush the internal and external caches" -f
    run "resync the internal cache with the kernel table" -R
    run "send a bulk update to the backups" -B
    ;;
backup)
    run "shorten kernel timers of entries left from being primary" -t
    run "ask the primary for a full resync" -n
    ;;
fault)
    run "shorten kernel timers of entries left from being primary" -t
    ;;
*)
    note "error: unknown state $state"
    exit 1
    ;;
esac
note "done $state"
exit 0
