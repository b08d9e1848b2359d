"""hydra configs of `tdmpc-prune train` (a package so that hydra finds them installed: pkg://)."""
