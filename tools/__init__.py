"""Offline utilities: Stage-1 preparation, the demo data set, RecordIO helpers, benchmarks of the data path."""
