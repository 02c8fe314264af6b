<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nodows/net.sh: brings up loopback, the statically configured
     interface and every other interface with a key address.NAME that is
     present; safe to run again (an address already set is left alone, so
     a run for a hot-plugged NIC does not disturb the others).
     Every model value is written as one shell word (nodows:sh-quote). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:variable name="interface" select="nodows:sh-quote($self/key[@name = 'interface'])"/>
  <xsl:variable name="address" select="nodows:sh-quote($self/key[@name = 'address'])"/>
  <xsl:template match="/">
    <xsl:text>#!/bin/sh
# rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>); do not edit
set -e
interface=</xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text>
address=</xsl:text>
    <xsl:value-of select="$address"/>
    <xsl:text>
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
while [ ! -e "/sys/class/net/$interface" ] &amp;&amp; [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/sbin/ip link set lo up
configure "$interface" "$address"
</xsl:text>
    <xsl:if test="$self/key[@name = 'gateway'] != ''">
      <xsl:text>/sbin/ip route replace default via </xsl:text>
      <xsl:value-of select="nodows:sh-quote($self/key[@name = 'gateway'])"/>
      <xsl:text> dev "$interface"&#10;</xsl:text>
    </xsl:if>
    <xsl:for-each select="$self/key[starts-with(@name, 'address.')]">
      <xsl:variable name="name" select="nodows:sh-quote(substring-after(@name, 'address.'))"/>
      <xsl:text>if /sbin/ip link show dev </xsl:text>
      <xsl:value-of select="$name"/>
      <xsl:text> &gt;/dev/null 2&gt;&amp;1; then configure </xsl:text>
      <xsl:value-of select="$name"/>
      <xsl:text> </xsl:text>
      <xsl:value-of select="nodows:sh-quote(.)"/>
      <xsl:text>; else echo "nodows: net </xsl:text>
      <xsl:value-of select="substring-after(@name, 'address.')"/>
      <xsl:text> absent: configured when it appears"; fi&#10;</xsl:text>
    </xsl:for-each>
  </xsl:template>
</xsl:stylesheet>
