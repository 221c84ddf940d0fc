"""Running `guard` under cProfile from a bench: `python -c PROFILE_GUARD STATS_FILE guard-args...`."""

# stdio_client SIGTERMs a server that has not exited 2 s after its stdin closed, and plain
# `python -m cProfile` would die without writing anything: the stats are written on any exit.
PROFILE_GUARD = """
import cProfile, signal, sys
out, sys.argv = sys.argv[1], ["guard", *sys.argv[2:]]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
prof = cProfile.Profile()
prof.enable()
try:
    from guard.cli.app import main
    main()
except BaseException:
    pass
finally:
    prof.disable()
    prof.dump_stats(out)
"""
