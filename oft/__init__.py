"""Stable Diffusion glue for OFT/COFT: SD1.5 loading, control and DreamBooth training, metrics, data helpers."""
