"""Tiny random-weight models in the real on-disk formats: for tests, benchmarks and the offline demo.

Their images are noise: they prove a graph runs end to end, not that it draws anything.
"""
