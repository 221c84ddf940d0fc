"""The simulated L402 server that `guard demo` (`guard.cli.demo`) runs behind guard: `python -m guard.demo.server`."""
