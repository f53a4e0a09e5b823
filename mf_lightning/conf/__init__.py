"""The Hydra configs (a package so Hydra finds them in an installed mf-lightning)."""
