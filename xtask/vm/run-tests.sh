#!/bin/sh
# Runs the integration tests inside the VM, one test at a time, writes the
# results as a tar onto the results disk (the only virtio disk) and powers
# the VM off. $1: the lane (direct or systemd). /egressd-vm/env and
# /egressd-vm/tests.sh are written by `cargo xtask vm-test`.
lane="$1"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1
. /egressd-vm/env
export EGRESSD_BIN EGRESSD_IMAGE EGRESSD_DEB
# This VM is thrown away: tests that install system files (systemd units
# under /etc) may run here, and only here.
export EGRESSD_TEST_DISPOSABLE_HOST=1
# The host's files, mounted back at their host paths (see image.rs: a
# checkout under /tmp is emptied at boot if placed there directly).
while read -r dir; do
    mkdir -p "$dir" && mount --bind "/egressd-vm/host$dir" "$dir" \
        || echo "egressd-vm: cannot mount the host's $dir"
done < /egressd-vm/binds
out=/run/egressd-vm-results
mkdir -p "$out/tests"
uptime() { cut -d' ' -f1 /proc/uptime; }
uptime > "$out/uptime-start"
echo "egressd-vm: userspace up: $lane lane, $(uname -r), at $(uptime) s"
uname -r > "$out/uname"
uname -v > "$out/version"
cat /sys/kernel/security/lsm > "$out/lsm" 2>/dev/null
for t in $TOOLS; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done > "$out/tools-missing"
[ -s "$out/tools-missing" ] && echo "egressd-vm: tools missing: $(tr '\n' ' ' < "$out/tools-missing")"

# run_test NAME BINARY ARGS...: one test binary, from the package's
# directory as cargo test runs it, bounded by $TEST_TIMEOUT seconds.
run_test() {
    name="$1"; bin="$2"; shift 2
    start=$(uptime)
    echo "egressd-vm: $name: running"
    (cd "$WORKSPACE/tests" && timeout -k 10 "$TEST_TIMEOUT" "$bin" --test-threads=1 "$@") \
        > "$out/tests/$name.log" 2>&1 < /dev/null
    rc=$?
    end=$(uptime)
    echo "$rc" > "$out/tests/$name.rc"
    echo "$start $end" > "$out/tests/$name.time"
    echo "egressd-vm: $name: exit $rc, $(grep '^test result' "$out/tests/$name.log" | tail -n 1) ($(awk "BEGIN { print $end - $start }") s)"
}
. /egressd-vm/tests.sh

uptime > "$out/uptime-end"
dmesg > "$out/dmesg.txt" 2>&1
if [ "$lane" = systemd ]; then
    journalctl -b --no-pager > "$out/journal.txt" 2>&1
    systemctl --failed --no-pager > "$out/systemd-failed.txt" 2>&1
fi
modprobe virtio_pci 2>/dev/null
modprobe virtio_blk 2>/dev/null
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if tar -cf /dev/vda -C "$out" . && sync; then
    echo "egressd-vm: results written"
else
    echo "egressd-vm: could not write the results disk"
fi
echo o > /proc/sysrq-trigger
sleep 60
