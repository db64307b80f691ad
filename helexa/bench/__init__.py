"""``helexa bench``: version-aware benchmarks of a gateway or a neuron, kept in SQLite.

``store`` (the database), ``scenarios`` (what is measured, over HTTP), ``runner`` (which cells to measure, with
version stamps and skipping), ``report`` (tables, comparisons, the HTML report).
"""
