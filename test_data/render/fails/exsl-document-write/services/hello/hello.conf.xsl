<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:exsl="http://exslt.org/common" extension-element-prefixes="exsl">
  <xsl:output method="text"/>
  <xsl:template match="/">
    <exsl:document href="/tmp/nodows-render-pwned" method="text">pwned</exsl:document>
    <xsl:text>ok</xsl:text>
  </xsl:template>
</xsl:stylesheet>
