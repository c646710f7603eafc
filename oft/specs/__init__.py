"""What the paper and the reference fix (tasks, the synthetic task, DreamBooth subjects and prompts, layouts, presets): data, no models."""
