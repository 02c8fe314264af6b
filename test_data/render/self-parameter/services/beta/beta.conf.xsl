<?xml version="1.0"?>
<!-- A global variable named self is the template's own: never replaced. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="service"/>
  <xsl:variable name="self" select="'my own variable'"/>
  <xsl:template match="/">
    <xsl:text>self: </xsl:text><xsl:value-of select="$self"/>
    <xsl:text>&#10;port (old idiom): </xsl:text><xsl:value-of select="/model/service[@name = $service]/key[@name = 'port']"/>
    <xsl:text>&#10;</xsl:text>
  </xsl:template>
</xsl:stylesheet>
