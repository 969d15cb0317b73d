"""cilia.mesh"""
