"""Build the initial oft-control model from an SD1.5 checkpoint: OFT on the 144 control targets (R = 0) plus a

The code and the full --help: ``oft.cli.control.tool_add_control_oft``.
"""

from oft.cli.control.tool_add_control_oft import cli

if __name__ == "__main__":
    cli()
