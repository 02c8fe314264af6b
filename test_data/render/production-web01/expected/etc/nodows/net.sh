#!/bin/sh
# rendered by nodows from the model (service net); do not edit
set -e
interface='eth0'
address='10.0.2.15/24'
# The driver may still be registering the interface: wait up to 5 s.
i=0
while [ ! -e "/sys/class/net/$interface" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/sbin/ip link set lo up
/sbin/ip link set "$interface" up
/sbin/ip address flush dev "$interface" scope global
/sbin/ip address add "$address" dev "$interface"
/sbin/ip route replace default via '10.0.2.2' dev "$interface"
echo "nodows: net $interface $address"
