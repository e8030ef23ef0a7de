"""Load-simulation benchmarks: vsched against the usual alternatives, on the same seeded scenarios.

Run ``python -m benchmarks`` (``--quick`` for a two-minute version); see the README's
"Performance" section for what each figure means and which clock it can be trusted on.
"""
