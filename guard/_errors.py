"""The guard's exceptions.

GuardError
├── ConfigError          bad flags or settings (exit status 2)
│   └── PolicyError      a policy file that cannot be used, with each problem's line and column
└── UpstreamStartError   the upstream cannot be started or reached at all (exit status 3)
"""


class GuardError(Exception):
    """Base class of every error the guard raises on purpose."""


class ConfigError(GuardError):
    """A flag, setting or file the guard was given is wrong; the message says which and why."""


class UpstreamStartError(GuardError):
    """The upstream could not be started (stdio) or reached (HTTP)."""
