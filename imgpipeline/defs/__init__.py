"""The code location's domains, one folder each; `imgpipeline.definitions` merges their Definitions."""
