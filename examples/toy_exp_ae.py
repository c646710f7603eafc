"""The paper's toy experiment (Fig. 2): an autoencoder rebuilt from angles only still reconstructs images,
from magnitudes only it does not.

The code and the full --help: ``oft.cli.toy_exp_ae``.
"""

from oft.cli.toy_exp_ae import cli

if __name__ == "__main__":
    cli()
