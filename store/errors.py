"""The one exception type for errors a user can cause; the CLI prints its message without a traceback."""


class CxrAlError(Exception):
    """A problem the user can fix (bad path, unreadable image, unknown class, busy project ...)."""


class ProjectBusyError(CxrAlError):
    """Another process holds the project's database for writing longer than we are willing to wait."""
