"""The model and its training: linear regression, local PyGAD search, aggregation, data."""
