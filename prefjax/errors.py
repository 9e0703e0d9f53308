"""Errors that the command-line tools print as one line (no traceback)."""


class PrefjaxError(Exception):
  """Base class: a problem with the user's input, config or data, not a bug."""


class ConfigError(PrefjaxError, ValueError):
  """A bad config field or value; the message names it and the valid choices."""


class DataError(PrefjaxError, ValueError):
  """Bad input data; the message names the file/example, the line and the field."""
