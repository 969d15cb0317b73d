"""cilia.translate"""
