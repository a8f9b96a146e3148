"""The one exception type for user mistakes.

Every bad input a user can make (an unknown site, a layer out of range, an empty prompt, a
mismatched file) raises :class:`GatescopeError` with a message that names the input, says
what was expected and how to fix it. Front ends print the message without a traceback.
"""


class GatescopeError(ValueError):
    """A user-facing error: the message says what was wrong and what to do instead."""
