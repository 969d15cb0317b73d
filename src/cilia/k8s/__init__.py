"""cilia.k8s"""
