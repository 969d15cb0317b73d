"""cilia.bpf"""
