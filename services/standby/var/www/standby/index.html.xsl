<?xml version="1.0" encoding="utf-8"?>
<!-- /var/www/standby/index.html: says that this server is the standby. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="html" encoding="utf-8" indent="no"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text disable-output-escaping="yes">&lt;!DOCTYPE html&gt;&#10;</xsl:text>
    <html>
      <head><title>standby</title></head>
      <xsl:text>&#10;</xsl:text>
      <body>
        <h1>standby</h1>
        <p>server=<xsl:value-of select="$server"/> mode=<xsl:value-of select="$mode"/></p>
        <xsl:text>&#10;</xsl:text>
        <p><xsl:value-of select="$self/key[@name = 'message']"/></p>
        <xsl:text>&#10;</xsl:text>
      </body>
    </html>
  </xsl:template>
</xsl:stylesheet>
