"""cilia.obs"""
