"""Imported by the bundle's Python at start (site runs under -I): gives back the
environment the pod started it with.

With no locale variable set, as in most images, Python coerces the C locale (PEP 538)
and exports LC_CTYPE=C.UTF-8; the only way to turn that off, PYTHONCOERCECLOCALE=0,
is an environment variable, which -I ignores and which would reach the functions.
Functions must see the pod's environment as the Go watchdog passes it, so a variable
Python added is removed again; /proc/self/environ still holds the environment
execve() was given, before Python changed it.
"""

import os


def _restore_locale_variable() -> None:
    try:
        with open("/proc/self/environ", "rb") as f:
            initial = f.read().split(b"\0")
    except OSError:
        return
    names = {entry.split(b"=", 1)[0] for entry in initial if entry}
    if b"LC_CTYPE" not in names:
        os.environ.pop("LC_CTYPE", None)


_restore_locale_variable()
