"""The one exception type for mistakes a user can make (bad files, bad values).

The CLI turns it into one line on stderr and exit code 2. Anything else is a bug and stays a traceback.
"""


class FastWaveNetError(Exception):
    """A problem with the user's input: a file, a value, a request the machine cannot serve."""


def shown(value) -> str:
    """A value as a one-line message shows it: its repr, cut to 40 characters. (An integer of thousands of digits
    has no repr: Python refuses to print past 4,300 of them.)"""
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = " ".join(repr(value).split())  # an array's repr spans lines
    return text if len(text) <= 40 else text[:37] + "..."
