"""The interactive app: a Gradio page that samples a trained control model from a control image (or a photo's
canny edges) and a prompt; without --model, the shipped tiny demo model on a CPU.

The code and the full --help: ``oft.cli.control.app``.
"""

from oft.cli.control.app import cli

if __name__ == "__main__":
    cli()
