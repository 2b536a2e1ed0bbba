"""Framework extensions: the run launcher, its fork server and run priority."""
