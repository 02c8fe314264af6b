<?xml version="1.0"?>
<!-- $self is this service's element; the old idiom gives the same node;
     id('NAME') is any service's element. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text>self: </xsl:text><xsl:value-of select="name($self)"/> <xsl:text> </xsl:text><xsl:value-of select="$self/@name"/>
    <xsl:text>&#10;port: </xsl:text><xsl:value-of select="$self/key[@name = 'port']"/>
    <xsl:text>&#10;same node as the old idiom: </xsl:text><xsl:value-of select="count($self | /model/service[@name = $service]) = 1"/>
    <xsl:text>&#10;keys: </xsl:text><xsl:for-each select="$self/key"><xsl:value-of select="@name"/><xsl:text>=</xsl:text><xsl:value-of select="."/><xsl:text> </xsl:text></xsl:for-each>
    <xsl:text>&#10;beta port: </xsl:text><xsl:value-of select="id('beta')/key[@name = 'port']"/>
    <xsl:text>&#10;unknown service: </xsl:text><xsl:value-of select="count(id('nosuch'))"/>
    <xsl:text>&#10;a key is not an id: </xsl:text><xsl:value-of select="count(id('port'))"/>
    <xsl:text>&#10;document order: </xsl:text><xsl:for-each select="id('gamma alpha beta')"><xsl:value-of select="@name"/><xsl:text> </xsl:text></xsl:for-each>
    <xsl:text>&#10;</xsl:text>
  </xsl:template>
</xsl:stylesheet>
