/*
 * /oscar/bin/fwatchdog: starts the bundled Python on the gateway, in any image.
 *
 * Static, so it needs no loader and no libc from the image (a busybox-only or
 * scratch image has neither). It finds its own folder through /proc/self/exe and
 * hands over, with execve, to the glibc loader the bundle carries beside it:
 *
 *   <dir>/fwatchdog.d/lib/ld-linux-x86-64.so.2 --inhibit-cache
 *       --library-path <dir>/fwatchdog.d/lib --argv0 <dir>/fwatchdog.d/bin/python3.11
 *       <dir>/fwatchdog.d/bin/python3.11 -I -B -m watchdog ARGS...
 *
 * Running the loader as a program, instead of through the interpreter's own
 * PT_INTERP (an absolute path the image may lack, or fill with an older glibc), is
 * what lets the bundle carry its glibc. Everything travels in argv and nothing in
 * the environment: the functions the gateway forks get the pod's environment as it
 * was (no LD_LIBRARY_PATH, no PYTHONHOME), so the image's own tools load the
 * image's own libraries. --argv0 gives Python its real path, from which it finds
 * its prefix (fwatchdog.d/lib/python3.11); -I ignores PYTHON* variables and the
 * user's site-packages, -B never writes bytecode (the volume is read-only, and
 * the bundle ships its .pyc). --inhibit-cache keeps the image's ld.so.cache, built
 * for the image's libc, out of the search.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SUBDIR "/fwatchdog.d"
#define LOADER "/lib/ld-linux-x86-64.so.2"
#define LIBDIR "/lib"
#define PYTHON "/bin/python3.11"

/* How an installer tells this launcher from the Go watchdog it replaces (deploy/oscar/
 * install.sh greps for "/fwatchdog.d/lib/"): kept in the binary even though unused. */
__attribute__((used)) static const char identity[] =
    "fwatchdog-bundle-launcher: runs <dir>/fwatchdog.d/lib/ld-linux-x86-64.so.2";

/* The folder this program lives in: /proc/self/exe resolves symbolic links, so a
 * link to the launcher elsewhere still finds the bundle. Without /proc (a bare
 * chroot), argv[0] when it holds a slash. */
static int own_dir(const char *argv0, char *dir, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", dir, size - 1);
    if (n > 0) {
        dir[n] = '\0';
    } else if (argv0 && strchr(argv0, '/') && strlen(argv0) < size) {
        strcpy(dir, argv0);
    } else {
        return -1;
    }
    char *slash = strrchr(dir, '/');
    if (!slash)
        return -1;
    if (slash == dir)
        slash[1] = '\0';   /* the launcher at the root: "/" */
    else
        *slash = '\0';
    return 0;
}

static char *join(const char *dir, const char *tail)
{
    size_t n = strlen(dir) + strlen(tail) + 1;
    char *s = malloc(n);
    if (!s)
        return NULL;
    /* "/" + "/fwatchdog.d" would give "//fwatchdog.d": harmless, but keep it tidy */
    snprintf(s, n, "%s%s", strcmp(dir, "/") == 0 ? "" : dir, tail);
    return s;
}

int main(int argc, char **argv)
{
    char dir[PATH_MAX];
    if (own_dir(argc > 0 ? argv[0] : NULL, dir, sizeof dir) != 0) {
        fputs("fwatchdog: cannot find my own folder (no /proc/self/exe)\n", stderr);
        return 127;
    }
    /* fwatchdog.d may be a link an installer swaps to a new version: resolved once
     * here, the loader, the libraries and Python all come from the same one. */
    char *linked = join(dir, SUBDIR), top[PATH_MAX];
    if (!linked || !realpath(linked, top)) {
        fprintf(stderr, "fwatchdog: cannot find %s%s: %s\n", dir, SUBDIR, strerror(errno));
        return 127;
    }
    char *loader = join(top, LOADER), *libdir = join(top, LIBDIR);
    char *python = join(top, PYTHON);
    /* loader, 5 loader options, 5 Python options, the arguments, NULL */
    char **args = calloc(11 + (size_t)(argc > 0 ? argc - 1 : 0) + 1, sizeof *args);
    if (!loader || !libdir || !python || !args) {
        fputs("fwatchdog: out of memory\n", stderr);
        return 127;
    }
    size_t i = 0;
    args[i++] = loader;
    args[i++] = "--inhibit-cache";
    args[i++] = "--library-path";
    args[i++] = libdir;
    args[i++] = "--argv0";
    args[i++] = python;
    args[i++] = python;
    args[i++] = "-I";
    args[i++] = "-B";
    args[i++] = "-m";
    args[i++] = "watchdog";
    for (int k = 1; k < argc; k++)
        args[i++] = argv[k];
    args[i] = NULL;
    extern char **environ;
    execve(loader, args, environ);
    fprintf(stderr, "fwatchdog: cannot run %s: %s\n", loader, strerror(errno));
    return 127;
}
