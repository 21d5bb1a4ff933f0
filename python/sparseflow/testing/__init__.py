"""Test and benchmark support: readable references of every op, sample inputs, tolerances.

The runtime never imports this package; tests and benchmarks import it.
"""
