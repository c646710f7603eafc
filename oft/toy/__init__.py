"""The paper's toy experiment (Fig. 2): an autoencoder whose bottleneck is rebuilt from angles or magnitudes."""
