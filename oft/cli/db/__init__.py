"""oft-db's command lines (the scripts in oft-db/ call these)."""
