#!/bin/sh
# keepalived notify script of a Midcom high-availability pair (keepalived.conf: notify_master,
# notify_backup, notify_fault), modelled on conntrackd's primary-backup.sh.
# Usage: midcom-ha-notify.sh master|backup|fault
CONNTRACKD="/usr/sbin/conntrackd -C /etc/conntrackd/conntrackd.conf"
MIDCTL="/usr/sbin/midctl --socket /run/midcom/control.sock"

# keepalived drops a notify script's output: keep it, with times, for the post-mortem.
exec >>/var/log/midcom-ha.log 2>&1
log() { logger -t midcom-ha "$*" 2>/dev/null; echo "$(date +%s.%N) midcom-ha: $*"; }
log "$1"

case "$1" in
  master)
    # 1. The connection state first: commit the peer's entries into the kernel, so established
    #    flows, admitted or not, go on on the kernel fast path (midcom.nft: ct state established
    #    accept) without midcomd knowing them. With DisableExternalCache on (conntrackd.conf)
    #    they are in the kernel already and this has nothing to do; it matters if you keep the
    #    external cache.
    $CONNTRACKD -c || log "conntrackd -c (commit) failed (nothing to commit without an external cache)"
    # 2. Start afresh as the primary: flush both caches, resync the internal cache with the
    #    kernel and send a bulk update to the (new) backup.
    $CONNTRACKD -f || log "ERROR: conntrackd -f (flush) failed"
    $CONNTRACKD -R || log "ERROR: conntrackd -R (resync) failed"
    $CONNTRACKD -B || log "ERROR: conntrackd -B (bulk send) failed"
    # 3. Sessions without a connection (pinholes, pending admissions) live in the old master's
    #    midcomd only. `midctl announce` multicasts our epoch to the inside hosts (CSP ANNOUNCE,
    #    docs/PROTOCOL.md 5.7.1): their session keepers REFRESH at once, see our record in the
    #    answer and signal their sessions again (6.5). It also starts the NAT-PMP/PCP epoch again
    #    and announces it (RFC 6886 3.2.1, RFC 6887 8.5), so those clients re-map what we lack.
    log "master: $($MIDCTL status --json 2>/dev/null | tr -d '\n' | sed -n 's/.*"epoch" *: *\([0-9]*\).*/epoch \1/p')"
    log "announce: $($MIDCTL announce 2>&1)"
    ;;
  backup)
    # Make sure conntrackd runs, shorten the kernel timers of entries this box no longer
    # forwards, and ask the master for a full resync of its entries.
    $CONNTRACKD -s >/dev/null 2>&1 || log "ERROR: conntrackd is not running"
    $CONNTRACKD -t || log "ERROR: conntrackd -t (shorten timers) failed"
    $CONNTRACKD -n || log "ERROR: conntrackd -n (request resync) failed"
    ;;
  fault)
    # Same as backup, minus the resync request (the links may be down).
    $CONNTRACKD -t || log "ERROR: conntrackd -t (shorten timers) failed"
    ;;
  *)
    log "usage: $0 master|backup|fault"; exit 2 ;;
esac
exit 0
