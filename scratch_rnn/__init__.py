"""scratch_rnn: an Elman RNN and its backpropagation through time in NumPy alone."""
