"""The command lines: each module parses its flags into a config and makes one library call."""
