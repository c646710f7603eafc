"""The CPU-scale demo of oft-control: a pretrained tiny SD-shaped base and the OFT/COFT/LoRA comparison on it."""
