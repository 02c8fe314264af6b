<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nginx/sites-enabled/default: the demo site. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:variable name="web" select="$self"/>
  <xsl:template match="/">
    <xsl:text># rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>, mode </xsl:text>
    <xsl:value-of select="$mode"/>
    <xsl:text>); do not edit
server {
    listen </xsl:text>
    <xsl:call-template name="key"><xsl:with-param name="name" select="'port'"/><xsl:with-param name="default" select="'80'"/></xsl:call-template>
    <xsl:text> default_server;
    server_name </xsl:text>
    <xsl:call-template name="key"><xsl:with-param name="name" select="'server_name'"/><xsl:with-param name="default" select="'_'"/></xsl:call-template>
    <xsl:text>;
    root /var/www/html;
    index index.html;

    location / {
        try_files $uri $uri/ =404;
    }
}
</xsl:text>
  </xsl:template>
  <!-- The value of key $name of this service, or $default when the model has none. -->
  <xsl:template name="key">
    <xsl:param name="name"/>
    <xsl:param name="default"/>
    <xsl:variable name="value" select="$web/key[@name = $name]"/>
    <xsl:choose>
      <xsl:when test="$value"><xsl:value-of select="$value"/></xsl:when>
      <xsl:otherwise><xsl:value-of select="$default"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>
</xsl:stylesheet>
