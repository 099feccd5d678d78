"""Errors written for people; `spatialreward.cli.main` prints them as one line."""


class CLIError(Exception):
    """A user mistake: the message says what was wrong and what to do instead."""
