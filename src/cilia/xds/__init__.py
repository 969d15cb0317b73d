"""cilia.xds"""
