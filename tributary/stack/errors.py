"""Errors of the embedded stack; each message names the cause and what to change."""

from __future__ import annotations


class StackError(RuntimeError):
    """A component could not be started, checked or stopped; the message says why and what to do."""


class PortInUseError(StackError):
    """A component's port is held by a process this stack did not start."""


class BinaryMissingError(StackError):
    """The executable of a component is not installed."""


class ComponentExitedError(StackError):
    """A component exited while we waited for it to become healthy."""


class HealthTimeoutError(StackError):
    """A component did not become healthy within its timeout."""


class UnreachableError(StackError):
    """An external service (one we do not start) does not answer."""
