#!/usr/bin/env bash
# The README's two commands on a brand-new Debian 12 (bookworm) root, as a
# new user would run them: debootstrap a minimal root (minbase + make, the
# one tool the README assumes), clone the current checkout into it with
# ../shared beside it, then as root inside chroot:
#   make run    (in the background until /readyz answers 200, then stopped)
#   make test   (FRESH_QUICK=1: make deps all unit + FRESH_PYTEST files)
# Each step prints its result and duration. Not part of `make test`.
#
#   sudo test/fresh-root.sh                     # the full run (long)
#   sudo FRESH_QUICK=1 test/fresh-root.sh       # deps + all + unit + one file
#
# Environment:
#   FRESH_ROOT        where the root lives (default /var/tmp/exchange-fresh)
#   FRESH_MIRROR      Debian mirror (default: the first URI of apt's sources)
#   FRESH_REBOOTSTRAP 1 = debootstrap again instead of unpacking the pristine
#                     copy kept from the last debootstrap ($FRESH_ROOT.base.tar)
#   FRESH_QUICK       1 = make deps all unit + pytest FRESH_PYTEST
#   FRESH_PYTEST      integration files for the quick run
#                     (default test/integration/test_supervisor.py)
#   FRESH_KEEP        1 = leave the root in place after the run (for a look)
#
# What the root gets from this host besides Debian: the host's extra CA
# certificates (/usr/local/share/ca-certificates, e.g. an egress proxy's) and
# /etc/resolv.conf, so that apt, npm and Maven reach their registries the way
# the host does; and a policy-rc.d that keeps package scripts from starting
# daemons (nginx, prometheus) inside the chroot. The root shares the host's
# network: `make run` needs ports 8080, 8090 and 9100-9104 free.
set -uo pipefail

[ "$(id -u)" = 0 ] || { echo "fresh-root: run as root (debootstrap, chroot, mount)" >&2; exit 2; }
src=$(cd "$(dirname "$0")/.." && pwd)
root=${FRESH_ROOT:-/var/tmp/exchange-fresh}
base_tar=$root.base.tar
quick=${FRESH_QUICK:-0}
pytest_files=${FRESH_PYTEST:-test/integration/test_supervisor.py}
mirror=${FRESH_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p;s/^deb \(http[^ ]*debian\) .*/\1/p' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
log_dir=$root.logs
results=()
failed=0

step() { # step NAME COMMAND...: run, print result and duration, log to $log_dir/NAME.log
    local name=$1 t0 rc
    shift
    t0=$(date +%s)
    echo "==> $name"
    "$@" > "$log_dir/$name.log" 2>&1
    rc=$?
    local line
    line=$(printf '%-28s %-4s %5ds' "$name" "$([ $rc = 0 ] && echo ok || echo FAIL)" $(($(date +%s) - t0)))
    echo "    $line (log: $log_dir/$name.log)"
    [ $rc = 0 ] || { failed=1; tail -n 25 "$log_dir/$name.log" | sed 's/^/    | /'; }
    results+=("$line")
    return $rc
}

# Inside the root: a login-like environment, nothing inherited from ours.
in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb USER=root LOGNAME=root \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd /root/exchange-service && $1"
}

mounted=()
mount_one() { mount "$@" && mounted+=("${@: -1}"); }

# Every process whose root directory is the chroot (make run's service and
# simulator, a test's leftovers): SIGTERM, then SIGKILL.
root_pids() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$r" = "$root" ] && echo "${p#/proc/}"
    done
}
kill_root_procs() {
    local pids i
    pids=$(root_pids)
    [ -n "$pids" ] || return 0
    echo "fresh-root: stopping processes left in the root: $(echo $pids)"
    kill -TERM $pids 2>/dev/null
    for i in $(seq 50); do
        pids=$(root_pids)
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    kill -KILL $pids 2>/dev/null
}

cleanup() {
    kill_root_procs
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}"
    done
    mounted=()
    if [ "${FRESH_KEEP:-0}" != 1 ] && [ -d "$root" ]; then
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bootstrap() {
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap || return 1
    fi
    rm -rf --one-file-system "$root.bootstrap"
    debootstrap --variant=minbase --include=make,ca-certificates bookworm "$root.bootstrap" "$mirror" || return 1
    tar -C "$root.bootstrap" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar" && rm -rf --one-file-system "$root.bootstrap"
}

prepare() {
    rm -rf --one-file-system "$root" && mkdir -p "$root" && tar -C "$root" -xf "$base_tar" || return 1
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null || return 1
    fi
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
    # The current checkout (committed state) and ../shared beside it.
    git clone -q --no-hardlinks "$src" "$root/root/exchange-service" || return 1
    git -C "$root/root/exchange-service" log --oneline -1
    if [ -d "$src/../shared" ]; then cp -a "$src/../shared" "$root/root/shared"; fi
    mount_one -t proc proc "$root/proc" && mount_one -t sysfs sys "$root/sys" &&
        mount_one --bind /dev "$root/dev" && mount_one --bind /dev/pts "$root/dev/pts" &&
        mount_one -t tmpfs -o mode=1777 shm "$root/dev/shm"
}

listener_in_root() { # PORT: a process inside the root listens on 127.0.0.1:PORT
    local p
    for p in $(ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2); do
        [ "$(readlink "/proc/$p/root")" = "$root" ] && return 0
    done
    return 1
}

# make run in the background until the admin port's /readyz answers 200.
make_run() {
    setsid bash -c "$(declare -f in_root); root=$root; in_root 'exec make run'" > "$log_dir/make-run.out" 2>&1 &
    local pid=$! t0=$SECONDS code=
    echo "make run: pid $pid (output: $log_dir/make-run.out)"
    # The network is the host's: the answer counts only from a listener on
    # :8090 that runs inside the root (not another service of the host's).
    while kill -0 $pid 2>/dev/null && [ $((SECONDS - t0)) -lt 3600 ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:8090/readyz 2>/dev/null)
        [ "$code" = 200 ] && listener_in_root 8090 && break
        [ "$code" = 200 ] && echo "make run: :8090 answers from outside the root (ignored)" && code=
        sleep 1
    done
    echo "make run: /readyz answered ${code:-nothing} after $((SECONDS - t0)) s"
    curl -s --max-time 2 http://127.0.0.1:8090/status | head -c 600; echo
    kill -TERM -- -$pid 2>/dev/null
    local i
    for i in $(seq 150); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- -$pid 2>/dev/null
    wait $pid 2>/dev/null
    tail -n 15 "$log_dir/make-run.out"
    local left
    left=$(root_pids)
    [ -z "$left" ] || { echo "make run left processes behind: $left"; ps -o pid,args -p "${left//$'\n'/,}"; }
    [ "$code" = 200 ] && [ -z "$left" ]
}

t_all=$(date +%s)
mkdir -p "$log_dir" && rm -f "$log_dir"/*.log
echo "fresh-root: root $root, mirror $mirror, repo $src ($(git -C "$src" rev-parse --short HEAD))"
if [ "${FRESH_REBOOTSTRAP:-0}" = 1 ] || [ ! -f "$base_tar" ]; then
    step debootstrap bootstrap || exit 1
else
    echo "fresh-root: pristine debootstrap copy $base_tar (FRESH_REBOOTSTRAP=1 for a new one)"
fi
step prepare-root prepare || exit 1
step make-run make_run
if [ "$quick" = 1 ]; then
    step make-deps-all-unit in_root 'make deps all unit'
    step pytest-quick in_root "EXCHANGE_BUILD=\$PWD/build /usr/bin/python3 -m pytest -p no:cacheprovider -q $pytest_files"
else
    step make-test in_root 'make test'
fi
echo
echo "fresh-root summary (Debian 12 bookworm, $(in_root 'uname -m') root, $(date -u +%FT%TZ)):"
for r in "${results[@]}"; do echo "  $r"; done
echo "  total $(($(date +%s) - t_all)) s; $([ $failed = 0 ] && echo PASSED || echo FAILED)"
exit $failed
