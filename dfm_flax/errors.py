"""One exception type for problems the user can fix (bad input, bad config).

Entry points catch `UserError` and print its message as one line on stderr,
exiting with `exit_code` (default 1), instead of a traceback.
"""


class UserError(Exception):
  """An error caused by the user's input, with a message that says how to fix it."""

  def __init__(self, message: str, exit_code: int = 1):
    super().__init__(message)
    self.exit_code = exit_code
