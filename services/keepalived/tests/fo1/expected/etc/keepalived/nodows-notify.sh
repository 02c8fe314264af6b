#!/bin/sh
# rendered by nodows from the model (service keepalived); do not edit
# keepalived runs it on every transition: notify INSTANCE|GROUP NAME STATE PRIORITY.
# Transitions can overlap: the latest state is kept in a file and applied
# under a lock, so the last transition decides the mode.
state=$3
case "$state" in
    MASTER | BACKUP | FAULT) ;;
    *) exit 0 ;;
esac
mkdir -p /run/nodows
echo "$state" > /run/nodows/vrrp-state.tmp
mv /run/nodows/vrrp-state.tmp /run/nodows/vrrp-state
echo "nodows: vrrp $2 $state" > /dev/console
exec 9> /run/nodows/vrrp.lock
flock 9
case "$(cat /run/nodows/vrrp-state)" in
    MASTER) mode='failover' ;;
    BACKUP) mode='backup' ;;
    *) mode='backup' ;;
esac
if [ "$(/sbin/initctl mode)" != "$mode" ]; then
    /sbin/initctl mode "$mode"
fi
