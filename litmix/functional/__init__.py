"""Pure-tensor algorithms behind the litmix plugins, one module per method family."""
