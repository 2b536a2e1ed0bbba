"""The `imgpipeline` command: tooling around the code location (set-up, producers, queries, demo,
benchmarks). Each command module is imported only when its command runs."""
