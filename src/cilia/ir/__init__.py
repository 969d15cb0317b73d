"""cilia.ir"""
