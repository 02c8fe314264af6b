<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/sysctl.d/90-nodows.conf: every key of the sysctl service is a
     kernel parameter (key name = sysctl name); one line each
     (nodows:line refuses a value that would start another). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text># rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>); do not edit
</xsl:text>
    <!-- enabled is the built-in key of every service, not a parameter. -->
    <xsl:for-each select="$self/key[@name != 'enabled']">
      <xsl:value-of select="nodows:line(@name)"/>
      <xsl:text> = </xsl:text>
      <xsl:value-of select="nodows:line(.)"/>
      <xsl:text>&#10;</xsl:text>
    </xsl:for-each>
  </xsl:template>
</xsl:stylesheet>
