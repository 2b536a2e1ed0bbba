"""`imgpipeline bench …`: figures, printed and written to `.imgpipeline/bench/`; never asserted."""
