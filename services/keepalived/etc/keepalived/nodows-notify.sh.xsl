<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/keepalived/nodows-notify.sh: keepalived's notify script. The VRRP
     state picks the nodows mode (keys master_mode, backup_mode, fault_mode):
     the modes are data, this script only maps states to their names (each
     written as one shell word, nodows:sh-quote). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text>#!/bin/sh
# rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>); do not edit
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
    MASTER) mode=</xsl:text>
    <xsl:value-of select="nodows:sh-quote($self/key[@name = 'master_mode'])"/>
    <xsl:text> ;;
    BACKUP) mode=</xsl:text>
    <xsl:value-of select="nodows:sh-quote($self/key[@name = 'backup_mode'])"/>
    <xsl:text> ;;
    *) mode=</xsl:text>
    <xsl:value-of select="nodows:sh-quote($self/key[@name = 'fault_mode'])"/>
    <xsl:text> ;;
esac
if [ "$(/sbin/initctl mode)" != "$mode" ]; then
    /sbin/initctl mode "$mode"
fi
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
