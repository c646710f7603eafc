"""Data helpers: the synthetic task generator and the download/verify/unpack machinery behind scripts/."""
