#!/bin/sh
# rendered by nodows from the model (service keepalived); do not edit
# The driver may still be registering the interface: wait up to 5 s.
i=0
while [ ! -e /sys/class/net/'ens4' ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -e /sys/class/net/'ens4' ]; then
    echo "keepalived: no interface" 'ens4' ": a failover node needs its VRRP link (model: service keepalived, key interface)" >&2
    exit 1
fi
set -e
/sbin/ip link set 'ens4' up
/sbin/ip address replace '192.168.50.2/24' dev 'ens4'
exec /usr/sbin/keepalived --dont-fork --log-console --no-syslog --vrrp \
    --use-file /etc/keepalived/keepalived.conf \
    --pid /run/keepalived.pid --vrrp_pid /run/keepalived_vrrp.pid
