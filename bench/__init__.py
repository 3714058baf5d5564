"""The benchmark: the common notebook recipe against our DVC pipeline, same data, same machine.

Run `python -m bench.run --help`.
"""
