<?xml version="1.0" encoding="utf-8"?>
<!-- /var/www/html/index.html: the demo page, showing values from the model. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="html" encoding="utf-8" indent="no"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:variable name="title" select="$self/key[@name = 'title']"/>
  <xsl:template match="/">
    <xsl:text disable-output-escaping="yes">&lt;!DOCTYPE html&gt;&#10;</xsl:text>
    <html>
      <head><title><xsl:value-of select="$title"/></title></head>
      <xsl:text>&#10;</xsl:text>
      <body>
        <h1><xsl:value-of select="$title"/></h1>
        <p>server=<xsl:value-of select="$server"/> mode=<xsl:value-of select="$mode"/></p>
        <xsl:text>&#10;</xsl:text>
        <xsl:if test="id('ssh')/key[@name = 'port']">
          <p>ssh port <xsl:value-of select="id('ssh')/key[@name = 'port']"/></p>
          <xsl:text>&#10;</xsl:text>
        </xsl:if>
      </body>
    </html>
  </xsl:template>
</xsl:stylesheet>
