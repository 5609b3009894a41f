"""The one exception type for mistakes a user can make (bad files, bad values).

The CLI turns it into one line on stderr and exit code 2. Anything else is a bug and stays a traceback.
"""


class FastWaveNetError(Exception):
    """A problem with the user's input: a file, a value, a request the machine cannot serve."""
