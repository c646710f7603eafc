"""Evaluation metrics: canny IoU/F1, landmark error, segmentation mIoU, FID, DINO/CLIP-I/CLIP-T/LPIPS."""
