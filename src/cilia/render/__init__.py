"""cilia.render"""
