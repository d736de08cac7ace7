"""The one error of the Go template engine."""


class GoTemplateError(Exception):
    """A parse or execution error, worded as Go's text/template words it."""
