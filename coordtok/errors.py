"""The one base class of every error a user can cause.

Anything raised for bad input (a config key that does not exist, an unreadable checkpoint, a
missing weight file, a video that is too short, ...) derives from :class:`CoordTokError`. Its
message is one line that names the file or value, what is wrong and what to do; the command line
prints that line (``coordtok: error: ...``) and exits with status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class CoordTokError(Exception):
    """A user-facing error: its first line is the whole message the CLI prints."""


class CheckpointError(CoordTokError, RuntimeError):
    """A checkpoint could not be read, converted or written, or no readable checkpoint was found."""
