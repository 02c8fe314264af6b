#!/bin/sh
# nodows test agent (dev and test profiles only).
# Reads command lines from the virtio serial port org.nodows.agent, runs each
# with sh -c and writes its output (stdout and stderr) followed by the line
# @@nodows-agent-exit=N@@. See docs/interfaces.md, "The test agent".
# No udev in the image: find the port through sysfs when the
# /dev/virtio-ports/ symlink does not exist.

name=org.nodows.agent
: "${PATH:=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"
export PATH

find_port() {
    if [ -e "/dev/virtio-ports/$name" ]; then
        echo "/dev/virtio-ports/$name"
        return 0
    fi
    for dir in /sys/class/virtio-ports/*; do
        [ -r "$dir/name" ] || continue
        if [ "$(cat "$dir/name")" = "$name" ]; then
            echo "/dev/${dir##*/}"
            return 0
        fi
    done
    return 1
}

while :; do
    port=$(find_port) || { sleep 1; continue; }
    [ -c "$port" ] || { sleep 1; continue; }
    # One open for both directions: a virtio port can be opened only once.
    # A read returns end of file while the host side is not connected.
    if exec 3<>"$port"; then
        while IFS= read -r line <&3; do
            output=$(sh -c "$line" 2>&1 </dev/null)
            status=$?
            if [ -n "$output" ]; then
                printf '%s\n' "$output" >&3
            fi
            printf '@@nodows-agent-exit=%d@@\n' "$status" >&3
        done
        exec 3<&-
    fi
    sleep 0.5
done
