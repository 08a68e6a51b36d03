"""The shipped synthetic towers: built by scripts/make_towers.py, checked by its --check."""
