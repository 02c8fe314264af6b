<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/ssh/authorized_keys/root: the operators' public keys from the model
     (keys authorized_key.NAME of service ssh, typed ssh-public-key: a key
     line without options, so a value cannot grant a forced command or a
     forwarding). One line per key, in the order of their names. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text># rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>, keys authorized_key.NAME); do not edit
</xsl:text>
    <xsl:for-each select="$self/key[starts-with(@name, 'authorized_key.')]">
      <xsl:sort select="@name"/>
      <xsl:value-of select="nodows:line(.)"/>
      <xsl:text>
</xsl:text>
    </xsl:for-each>
  </xsl:template>
</xsl:stylesheet>
