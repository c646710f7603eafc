"""oft-control's command lines (the scripts in oft-control/ call these)."""
