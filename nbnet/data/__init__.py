"""Data: loading (load.py), preprocessing fitted on train only (prep.py), splits and CV (split.py)."""
