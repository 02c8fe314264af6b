<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nginx/sites-enabled/default: the demo site. -->
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
server {
    listen </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'port'])"/>
    <xsl:text> default_server;
    server_name </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'server_name'])"/>
    <xsl:text>;
    root /var/www/html;
    index index.html;

    location / {
        try_files $uri $uri/ =404;
    }
}
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
