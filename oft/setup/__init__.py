"""Getting the data and checkpoints: downloads, their sources, folder layouts, COCO preparation."""
