#!/usr/bin/env bash
# Single-node Ceph RGW (S3 server) on loopback, for s3fuse tests and benchmarks.
#
#   tests/support/servers/rgw.sh start [PORT]   # fresh cluster, prints `export ...` lines on stdout
#   tests/support/servers/rgw.sh stop           # kill daemons, remove the run dir
#   tests/support/servers/rgw.sh status         # exit 0 if running and S3 answers, 1 otherwise
#   tests/support/servers/rgw.sh env            # print the `export ...` lines of a running cluster
#
# Typical use:  eval "$(tests/support/servers/rgw.sh start)"
#
# One mon, one OSD on memstore (RAM), no cephx, pool size 1, radosgw (beast)
# on 127.0.0.1:PORT. Everything (conf, keyrings, data, logs, pids, sockets)
# lives under one run directory; nothing touches /etc/ceph or /var/lib/ceph.
#
# Environment:
#   S3FUSE_RGW_DIR            run directory            (default /tmp/s3fuse-rgw)
#   S3FUSE_RGW_PORT           S3 port if not given     (default 7480)
#   S3FUSE_RGW_MON_PORT       mon port                 (default: a free port)
#   S3FUSE_RGW_MEMSTORE_BYTES memstore capacity        (default 6 GiB). RAM is
#                             used only for data actually stored, but the OSD's
#                             RSS is about 2x the bytes stored. When the store
#                             is full, writes HANG (OSD failsafe), not fail.
#   S3FUSE_RGW_TIMEOUT        start timeout in seconds (default 90)
#   S3FUSE_RGW_SSL_PORT       also serve HTTPS on 127.0.0.1:PORT (beast ssl_endpoint) with
#   S3FUSE_RGW_SSL_CERT       this certificate and
#   S3FUSE_RGW_SSL_KEY        this private key (PEM files)
#   S3FUSE_RGW_DNS_NAME       rgw_dns_name: BUCKET.NAME hosts are virtual-hosted buckets
#                             (default 127.0.0.1: every request is path-style)
#   S3FUSE_RGW_STORAGE_CLASSES space-separated storage classes besides STANDARD (e.g.
#                             "COLD"), added to the default placement (radosgw restarts)
#   S3FUSE_RGW_EXTRA_CONF     extra ceph.conf text appended as is at the end,
#                             i.e. inside [client.rgw.s3fuse] unless it starts
#                             with its own header, e.g. $'[osd]\ndebug osd = 20'
#
# Only stdout carries the export lines; all progress/diagnostics go to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${S3FUSE_RGW_DIR:-/tmp/s3fuse-rgw}"
RUN_DIR="$(realpath -m -- "$RUN_DIR")"
CONF="$RUN_DIR/ceph.conf"
TIMEOUT="${S3FUSE_RGW_TIMEOUT:-90}"
MEMSTORE_BYTES="${S3FUSE_RGW_MEMSTORE_BYTES:-6442450944}"

ACCESS_KEY="s3fuseaccess"
SECRET_KEY="s3fusesecret"
RGW_NAME="client.rgw.s3fuse"

log() { echo "rgw.sh: $*" >&2; }

die() {
    log "ERROR: $*"
    if [ -d "$RUN_DIR/log" ]; then
        local f
        for f in "$RUN_DIR"/log/*.log "$RUN_DIR"/log/*.out; do
            [ -s "$f" ] || continue
            echo "----- tail of $f -----" >&2
            tail -n 25 "$f" >&2 || true
        done
    fi
    if [ "${STARTING:-0}" = 1 ]; then
        # Do not leave half a cluster running; keep the logs for inspection.
        STARTING=0
        kill_all || true
        log "daemons stopped; logs kept in $RUN_DIR/log (removed by the next start/stop)"
    fi
    exit 1
}

# ---------------------------------------------------------------- processes

# Is PID alive (and not a zombie)?
alive() {
    local pid="$1" state
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/status" ] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# PIDs of every process started for this run dir: the pid files, plus any
# process whose command line names our conf file (daemons, radosgw-admin,
# ceph CLI). Matching on the full conf path keeps us to our own processes.
our_pids() {
    local f pid
    {
        for f in "$RUN_DIR"/run/*.pid; do
            [ -f "$f" ] || continue
            pid="$(tr -dc '0-9' <"$f" 2>/dev/null || true)"
            [ -n "$pid" ] && echo "$pid"
        done
        pgrep -f -- "-c $CONF( |\$)" 2>/dev/null || true
    } | sort -un | while read -r pid; do
        [ "$pid" = "$$" ] && continue
        # A recycled pid from a stale pid file must still be ours.
        if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF"; then
            echo "$pid"
        fi
    done
}

kill_all() {
    local pids pid i
    pids="$(our_pids | tr '\n' ' ')"
    if [ -n "${pids// /}" ]; then
        log "stopping pids $pids"
        # SIGKILL on purpose: the cluster is thrown away, and a clean
        # memstore OSD shutdown would first dump all of RAM to disk.
        for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
        for i in $(seq 1 100); do
            local left=""
            for pid in $pids; do alive "$pid" && left="$left $pid"; done
            [ -z "$left" ] && break
            sleep 0.1
        done
        for pid in $pids; do
            alive "$pid" && die "pid $pid did not die"
        done
    fi
    # A second sweep for anything spawned meanwhile.
    pids="$(our_pids | tr '\n' ' ')"
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
}

do_stop() {
    kill_all
    if [ -d "$RUN_DIR" ]; then
        case "$RUN_DIR" in
            ""|"/"|"/tmp"|"/root"|"/home"|"$HOME") die "refusing to remove run dir '$RUN_DIR'" ;;
        esac
        rm -rf -- "$RUN_DIR"
    fi
    log "stopped"
}

# ---------------------------------------------------------------- helpers

free_port() {
    python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

port_in_use() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
sys.exit(0)
PY
}

http_code() {
    curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null || true
}

ceph_cli() {
    timeout 30 ceph -c "$CONF" --connect-timeout 10 "$@"
}

print_env() {
    local port="$1"
    echo "export S3FUSE_TEST_ENDPOINT=http://127.0.0.1:$port"
    echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
}

check_pid() {
    # check_pid NAME: the daemon of pid file run/NAME.pid must be alive.
    local f="$RUN_DIR/run/$1.pid" pid
    [ -f "$f" ] || die "$1 did not write $f"
    pid="$(tr -dc '0-9' <"$f")"
    alive "$pid" || die "$1 (pid $pid) died"
}

# ---------------------------------------------------------------- start

do_start() {
    local port="${1:-${S3FUSE_RGW_PORT:-7480}}"
    local t0 deadline mon_port fsid osd_uuid osd_id
    t0=$(date +%s.%N)
    deadline=$(( $(date +%s) + TIMEOUT ))

    for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool curl python3; do
        command -v "$b" >/dev/null 2>&1 || die "$b not found; run $HERE/install-rgw.sh"
    done

    # Idempotent: throw away whatever ran in this run dir before.
    if [ -e "$RUN_DIR" ] || [ -n "$(our_pids)" ]; then
        log "stopping previous cluster in $RUN_DIR"
        do_stop
    fi
    if port_in_use "$port"; then
        die "port 127.0.0.1:$port is already in use by something else"
    fi

    local frontends="beast endpoint=127.0.0.1:$port tcp_nodelay=1"
    if [ -n "${S3FUSE_RGW_SSL_PORT:-}" ]; then
        [ -r "${S3FUSE_RGW_SSL_CERT:-}" ] && [ -r "${S3FUSE_RGW_SSL_KEY:-}" ] \
            || die "S3FUSE_RGW_SSL_PORT needs readable S3FUSE_RGW_SSL_CERT and S3FUSE_RGW_SSL_KEY"
        port_in_use "$S3FUSE_RGW_SSL_PORT" && die "port 127.0.0.1:$S3FUSE_RGW_SSL_PORT is already in use"
        frontends="$frontends ssl_endpoint=127.0.0.1:$S3FUSE_RGW_SSL_PORT"
        frontends="$frontends ssl_certificate=$S3FUSE_RGW_SSL_CERT ssl_private_key=$S3FUSE_RGW_SSL_KEY"
    fi

    STARTING=1
    mon_port="${S3FUSE_RGW_MON_PORT:-$(free_port)}"
    fsid="$(cat /proc/sys/kernel/random/uuid)"
    osd_uuid="$(cat /proc/sys/kernel/random/uuid)"

    mkdir -p "$RUN_DIR"/{run,log,mon/ceph-a,osd/ceph-0,rgw}
    echo "$port" >"$RUN_DIR/port"

    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon initial members = a
mon host = v1:127.0.0.1:$mon_port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false

# No cephx: nothing here needs keys, and it keeps clients trivial.
auth cluster required = none
auth service required = none
auth client required = none
keyring = $RUN_DIR/keyring

# Everything under the run dir.
run dir = $RUN_DIR/run
admin socket = $RUN_DIR/run/\$name.asok
pid file = $RUN_DIR/run/\$name.pid
log file = $RUN_DIR/log/\$name.log
mon data = $RUN_DIR/mon/\$cluster-\$id
osd data = $RUN_DIR/osd/\$cluster-\$id
rgw data = $RUN_DIR/rgw
crash dir = $RUN_DIR/crash
exec dir = $RUN_DIR/run
mon cluster log file = $RUN_DIR/log/cluster.log

# One OSD: replicas of 1, without health complaints.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
# Do not stop the mon if the disk holding /tmp is fairly full.
mon data avail crit = 1
mon data avail warn = 2

# Each mon change (pool create, application enable, ...) waits for the next
# paxos proposal, 1 s by default; RGW does ~20 of them sequentially on first
# use. Proposing quickly cuts start-up and first-bucket latency by seconds.
paxos propose interval = 0.05
paxos min wait = 0.01

# Quiet logs.
debug ms = 0
debug mon = 1
debug osd = 1
debug rgw = 1
debug monc = 0
debug objecter = 0
debug rados = 0
debug memstore = 0
log to stderr = false
err to stderr = true

[osd]
# Objects live in RAM. The default capacity (1 GiB) is too small: past it the
# OSD engages its full failsafe and S3 writes hang. Memory is only used for
# what is stored (about 2x the data in OSD RSS), so a big cap costs nothing.
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
# The OSD's own start-up mon commands (crush create-or-move, set-device-class)
# race with its first monmap and can fail with 'wrong fsid', killing the OSD.
# The script places osd.0 in the crush map itself instead.
osd crush update on start = false
osd class update on start = false

[$RGW_NAME]
rgw frontends = $frontends
rgw dns name = ${S3FUSE_RGW_DNS_NAME:-127.0.0.1}
rgw thread pool size = 128
# Reclaim deleted objects' data quickly so repeated benchmarks do not pile up in RAM.
rgw gc obj min wait = 60
rgw gc processor period = 60
rgw lc debug interval = 10
EOF
    if [ -n "${S3FUSE_RGW_EXTRA_CONF:-}" ]; then
        printf '\n# S3FUSE_RGW_EXTRA_CONF\n%s\n' "$S3FUSE_RGW_EXTRA_CONF" >>"$CONF"
    fi
    : >"$RUN_DIR/keyring"

    # ---- mon
    log "mon: mkfs (mon port $mon_port)"
    ceph-authtool --create-keyring "$RUN_DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' \
        >"$RUN_DIR/log/mkfs.out" 2>&1 || die "ceph-authtool failed"
    monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$mon_port]" "$RUN_DIR/monmap" \
        >>"$RUN_DIR/log/mkfs.out" 2>&1 || die "monmaptool failed"
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$RUN_DIR/monmap" --keyring "$RUN_DIR/mon.keyring" \
        >>"$RUN_DIR/log/mkfs.out" 2>&1 || die "ceph-mon --mkfs failed"
    ceph-mon -c "$CONF" -i a >>"$RUN_DIR/log/daemons.out" 2>&1 || die "ceph-mon failed to start"
    check_pid mon.a

    # ---- osd
    log "osd: create + mkfs (memstore, $MEMSTORE_BYTES bytes)"
    # The first commands can race the mon's own start-up ("Error EPERM: problem getting
    # command descriptions from mon", fsid 0 in the mon log): retry them until the deadline.
    until osd_id="$(ceph_cli osd new "$osd_uuid" 2>>"$RUN_DIR/log/mkfs.out")"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "ceph osd new failed"
        check_pid mon.a
        log "mon not ready for commands yet; retrying"
        sleep 0.5
    done
    [ "$osd_id" = 0 ] || die "unexpected osd id '$osd_id'"
    until ceph_cli osd crush add osd.0 1.0 root=default host=s3fuse >>"$RUN_DIR/log/mkfs.out" 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "ceph osd crush add failed"
        sleep 0.5
    done
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" \
        >>"$RUN_DIR/log/mkfs.out" 2>&1 || die "ceph-osd --mkfs failed"
    ceph-osd -c "$CONF" -i 0 >>"$RUN_DIR/log/daemons.out" 2>&1 || die "ceph-osd failed to start"

    log "osd: waiting until up"
    while :; do
        local dump
        dump="$(ceph_cli osd dump 2>/dev/null || true)"
        if grep -qE '^osd\.0 up +in' <<<"$dump"; then
            break
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "timeout waiting for osd.0 to come up"
        check_pid osd.0
        sleep 0.5
    done

    # ---- radosgw
    log "radosgw: starting on 127.0.0.1:$port"
    radosgw -c "$CONF" -n "$RGW_NAME" >>"$RUN_DIR/log/daemons.out" 2>&1 || die "radosgw failed to start"
    while :; do
        local code
        code="$(http_code "$port")"
        case "$code" in
            2??|4??) break ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || die "timeout waiting for S3 on port $port (last HTTP code '$code')"
        if [ -f "$RUN_DIR/run/$RGW_NAME.pid" ]; then check_pid "$RGW_NAME"; fi
        sleep 0.3
    done

    # ---- user with fixed keys
    log "radosgw-admin: creating user s3fuse"
    timeout 60 radosgw-admin -c "$CONF" -n client.admin user create --uid=s3fuse --display-name=s3fuse \
        --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" \
        >"$RUN_DIR/log/user.out" 2>&1 || die "radosgw-admin user create failed"

    # Check that the keys work (signed ListBuckets); RGW caches users, so
    # allow a moment for it to notice.
    while :; do
        if python3 - "$port" <<'PY' 2>/dev/null
import sys, datetime, hashlib, hmac, urllib.request
port = sys.argv[1]
ak, sk, region = "s3fuseaccess", "s3fusesecret", "us-east-1"
now = datetime.datetime.utcnow()
amzdate, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
host = "127.0.0.1:%s" % port
ph = hashlib.sha256(b"").hexdigest()
canon = "GET\n/\n\nhost:%s\nx-amz-content-sha256:%s\nx-amz-date:%s\n\nhost;x-amz-content-sha256;x-amz-date\n%s" % (host, ph, amzdate, ph)
scope = "%s/%s/s3/aws4_request" % (date, region)
sts = "AWS4-HMAC-SHA256\n%s\n%s\n%s" % (amzdate, scope, hashlib.sha256(canon.encode()).hexdigest())
k = ("AWS4" + sk).encode()
for part in (date, region, "s3", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request("http://%s/" % host, headers={
    "x-amz-date": amzdate, "x-amz-content-sha256": ph,
    "Authorization": "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=%s" % (ak, scope, sig)})
urllib.request.urlopen(req, timeout=5).read()
PY
        then
            break
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "timeout waiting for signed S3 requests to succeed"
        sleep 0.5
    done

    if [ -n "${S3FUSE_RGW_STORAGE_CLASSES:-}" ]; then
        local sc pid
        for sc in $S3FUSE_RGW_STORAGE_CLASSES; do
            log "radosgw-admin: storage class $sc"
            timeout 60 radosgw-admin -c "$CONF" -n client.admin zonegroup placement add --rgw-zonegroup default \
                --placement-id default-placement --storage-class "$sc" >>"$RUN_DIR/log/user.out" 2>&1 \
                || die "zonegroup placement add $sc failed"
            timeout 60 radosgw-admin -c "$CONF" -n client.admin zone placement add --rgw-zone default \
                --placement-id default-placement --storage-class "$sc" \
                --data-pool "default.rgw.$(tr 'A-Z' 'a-z' <<<"$sc").data" >>"$RUN_DIR/log/user.out" 2>&1 \
                || die "zone placement add $sc failed"
        done
        # radosgw reads the zone's placement at start only.
        pid="$(tr -dc '0-9' <"$RUN_DIR/run/$RGW_NAME.pid")"
        kill -KILL "$pid"
        while alive "$pid"; do sleep 0.1; done
        radosgw -c "$CONF" -n "$RGW_NAME" >>"$RUN_DIR/log/daemons.out" 2>&1 || die "radosgw failed to restart"
        while :; do
            case "$(http_code "$port")" in 2??|4??) break ;; esac
            [ "$(date +%s)" -lt "$deadline" ] || die "timeout waiting for the restarted radosgw"
            sleep 0.3
        done
    fi

    STARTING=0
    local t1
    t1=$(date +%s.%N)
    log "ready: http://127.0.0.1:$port in $(python3 -c "print('%.1f' % ($t1 - $t0))") s (run dir $RUN_DIR)"
    print_env "$port"
}

# ---------------------------------------------------------------- status

do_status() {
    local name pid ok=0 port=""
    [ -f "$RUN_DIR/port" ] && port="$(cat "$RUN_DIR/port")"
    for name in mon.a osd.0 "$RGW_NAME"; do
        pid=""
        [ -f "$RUN_DIR/run/$name.pid" ] && pid="$(tr -dc '0-9' <"$RUN_DIR/run/$name.pid")"
        if alive "$pid"; then
            log "$name running (pid $pid)"
        else
            log "$name not running"
            ok=1
        fi
    done
    if [ -n "$port" ]; then
        local code
        code="$(http_code "$port")"
        case "$code" in
            2??|4??) log "S3 answers on http://127.0.0.1:$port (HTTP $code)" ;;
            *) log "S3 does not answer on http://127.0.0.1:$port"; ok=1 ;;
        esac
    else
        ok=1
    fi
    return $ok
}

do_env() {
    [ -f "$RUN_DIR/port" ] || die "no cluster in $RUN_DIR"
    print_env "$(cat "$RUN_DIR/port")"
}

case "${1:-}" in
    start)  shift; do_start "$@" ;;
    stop)   do_stop ;;
    status) do_status ;;
    env)    do_env ;;
    *) echo "usage: $0 start [PORT] | stop | status | env" >&2; exit 2 ;;
esac
