<?xml version="1.0"?>
<!-- A service the model does not mention: $self is empty. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text>self: </xsl:text><xsl:value-of select="count($self)"/>
    <xsl:text>&#10;</xsl:text>
  </xsl:template>
</xsl:stylesheet>
