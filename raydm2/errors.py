"""One exception type for every refusal a user can act on.

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class RayDM2Error(Exception):
    """A bad input or state, described so the user can fix it."""


class ProjectLockedError(RayDM2Error):
    """Another live writer holds the project lock."""


class StateError(RayDM2Error):
    """A round-state transition the state machine does not allow."""
