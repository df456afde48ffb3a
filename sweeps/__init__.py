"""Ray Tune sweeps over dotted config keys."""
