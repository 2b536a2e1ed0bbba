"""The laboratory: history detected again with another model, compared and backtested."""
