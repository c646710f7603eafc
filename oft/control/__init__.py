"""Controllable generation (oft-control): hint encoder, Lightning module, datasets, task registry."""
