"""Subject-driven generation (oft-db): the DreamBooth benchmark table, dataset, class images, training loop."""
