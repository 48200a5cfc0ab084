"""reference: the torch twins of the scratch_rnn layers, for cross-validation."""
