"""The gateway's process: `python -m watchdog`, the OSCAR bundle's launcher, and the
`fwatchdog` command (`watchdog.__main__:main`).

The start is mostly imports, and their objects live as long as the process: the
cyclic garbage collector is off while they load (it took a tenth of the start,
scanning them again and again for garbage there is none of), then they are frozen
out of its sight (gc.freeze: never scanned again, and in workers forked later, their
pages are not written by a collection), and it runs as before for what follows. A
process that serves loads the serving path here too, so that all of it is frozen.
"""

import gc
import sys

# What does not serve: the client, the health checks, --help and --version.
NOT_SERVING = frozenset({"run", "healthcheck", "-run-healthcheck", "--run-healthcheck",
                         "-h", "-help", "--help", "-version", "--version"})


def main() -> int:
    gc.disable()
    try:
        from watchdog import cli

        if not NOT_SERVING.intersection(sys.argv[1:2]):
            import watchdog.server  # noqa: F401 - as cli.run will, but now
        gc.freeze()
    finally:
        gc.enable()
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
