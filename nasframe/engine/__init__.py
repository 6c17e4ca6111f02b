"""The engine: multi-split reversible layers with backprop by reconstruction, choice nodes,
the supernet built from a space, parameter slots, memory tools and model sizing. It knows no
strategy and no command line."""
