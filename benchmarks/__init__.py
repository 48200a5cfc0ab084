"""Benchmark scripts (not tests): run them by hand, read the table, keep the JSON.

``python -m benchmarks.rnn`` times scratch_rnn.RNN's forward+backward against torch.nn.RNN on this
CPU; see its docstring and the README, section Performance.
"""
