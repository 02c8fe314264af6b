#!/bin/sh
# rendered by nodows from the model (service net); do not edit
set -e
interface='eth0'
address='10.0.2.15/24'
# configure NAME ADDRESS: the link up and, unless it is set already, the
# address in place of the old ones.
configure() {
	/sbin/ip link set "$1" up
	if ! /sbin/ip -o address show dev "$1" scope global | grep -q " $2 "; then
		/sbin/ip address flush dev "$1" scope global
		/sbin/ip address add "$2" dev "$1"
	fi
	echo "nodows: net $1 $2"
}
# The driver may still be registering the interface: wait up to 5 s.
i=0
while [ ! -e "/sys/class/net/$interface" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/sbin/ip link set lo up
configure "$interface" "$address"
/sbin/ip route replace default via '10.0.2.2' dev "$interface"
