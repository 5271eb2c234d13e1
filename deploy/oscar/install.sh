#!/bin/sh
# Puts this gateway onto OSCAR's /oscar/bin volume (the PVC `oscar-pvc`) as
# `fwatchdog`, in place of the Go watchdog OSCAR's bin downloader put there; and back.
#
#   install.sh install     the bundle becomes fwatchdog; the Go watchdog is kept as fwatchdog.go
#   install.sh rollback    fwatchdog.go becomes fwatchdog again
#   install.sh status      says what fwatchdog is now
#   install.sh prune       removes the bundle folders of earlier installs (see below)
#
# BUNDLE: the bundle (`make oscar-bin`: fwatchdog + fwatchdog.d/), default /opt/oscar-bin.
# TARGET: the volume, mounted read-write, default /data (where OSCAR's downloader mounts it).
#
# The supervisor's files (supervisor, _internal/, alpine/) are never touched: the gateway
# hands over to them. Every change is a copy under a temporary name on the volume, then
# a rename, so that a pod starting meanwhile finds the old or the new, never half of
# one; the folder is versioned (fwatchdog.d.<BUILD-ID>) and fwatchdog.d is a symbolic
# link to it, swapped by rename too. Running it again changes nothing. Runs at once
# (two Jobs) take turns: a lock folder on the volume, broken when older than LOCK_STALE
# minutes (a run killed before it let go). Earlier folders stay until `prune`: a pod
# started from any earlier install may still be loading from its folder.
set -eu
umask 022  # pods run as any user: everything installed is readable by all

bundle=${BUNDLE:-/opt/oscar-bin}
target=${TARGET:-/data}
lock_stale=${LOCK_STALE:-10}
lock="$target/.fwatchdog-lock"

say() { printf 'fwatchdog-install: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }

# Ours: the launcher names its folder; the Go watchdog does not.
is_bundle() { [ -f "$1" ] && grep -qF '/fwatchdog.d/lib/' "$1"; }

# put SOURCE NAME: copy onto the volume under a temporary name, then rename over NAME.
put() {
    tmp="$target/.fwatchdog-tmp.$2.$$"
    cp "$1" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$target/$2"
}

describe() {
    if [ ! -e "$target/$1" ]; then
        echo "missing"
    elif is_bundle "$target/$1"; then
        echo "this gateway ($(cat "$target/fwatchdog.d/BUILD-ID" 2>/dev/null || echo '?'))"
    else
        echo "the Go watchdog"
    fi
}

check_volume() {
    [ -d "$target" ] && [ -w "$target" ] || die "$target is not a writable folder: mount oscar-pvc there"
    # OSCAR's downloader fills the volume first; without its supervisor this is
    # probably not OSCAR's volume (and the gateway would have nothing to hand over to).
    [ -e "$target/supervisor" ] ||
        die "no supervisor in $target: is this oscar-pvc, filled by OSCAR's bin downloader?"
    take_lock
    rm -rf "$target"/.fwatchdog-tmp.*  # left by an interrupted run (not another's: we hold the lock)
}

# mkdir is atomic on every file system a volume may be (flock is not in every
# busybox, nor honoured by every network file system).
take_lock() {
    waited=0
    until mkdir "$lock" 2>/dev/null; do
        if [ -n "$(find "$lock" -maxdepth 0 -mmin +"$lock_stale" 2>/dev/null)" ]; then
            # Moved aside first: of two runs that both found it stale, only the one
            # whose rename succeeds breaks it (the other's would remove a fresh lock).
            owner=$(cat "$lock/owner" 2>/dev/null || echo '?')
            if mv "$lock" "$lock.stale.$$" 2>/dev/null; then
                say "breaking a lock older than $lock_stale minutes ($owner)"
                rm -rf "$lock.stale.$$"
            fi
            continue
        fi
        [ "$waited" -eq 0 ] && say "another install is running ($(cat "$lock/owner" 2>/dev/null || echo '?')): waiting"
        waited=$((waited + 1))
        [ "$waited" -le $((lock_stale * 60)) ] || die "the lock $lock was not let go in $lock_stale minutes"
        sleep 1
    done
    echo "$(hostname 2>/dev/null || echo '?') pid $$" >"$lock/owner"
    trap 'rm -rf "$lock"' EXIT
    trap 'exit 1' HUP INT TERM
}

install() {
    [ -x "$bundle/fwatchdog" ] && [ -f "$bundle/fwatchdog.d/BUILD-ID" ] ||
        die "no bundle in $bundle (make oscar-bin builds one)"
    check_volume
    id=$(cat "$bundle/fwatchdog.d/BUILD-ID")
    changed=no

    if [ -e "$target/fwatchdog" ] && ! is_bundle "$target/fwatchdog"; then
        # A Go watchdog: the first install, or OSCAR's downloader ran again since.
        if ! cmp -s "$target/fwatchdog" "$target/fwatchdog.go"; then
            put "$target/fwatchdog" fwatchdog.go
            say "kept the Go watchdog as fwatchdog.go"
            changed=yes
        fi
    elif [ ! -e "$target/fwatchdog.go" ]; then
        say "warning: no Go watchdog to keep: rollback will not be possible"
    fi

    dir="fwatchdog.d.$id"
    if [ ! -f "$target/$dir/BUILD-ID" ]; then
        rm -rf "$target/$dir"
        cp -R "$bundle/fwatchdog.d" "$target/.fwatchdog-tmp.dir.$$"
        chmod -R a+rX "$target/.fwatchdog-tmp.dir.$$"  # whatever the bundle's modes were
        mv "$target/.fwatchdog-tmp.dir.$$" "$target/$dir"
        changed=yes
    fi
    previous=$(readlink "$target/fwatchdog.d" 2>/dev/null || true)
    if [ "$previous" != "$dir" ]; then
        if [ -d "$target/fwatchdog.d" ] && [ ! -L "$target/fwatchdog.d" ]; then
            # A folder copied by hand: moved aside (the only step that is not atomic).
            rm -rf "$target/fwatchdog.d.manual"
            mv "$target/fwatchdog.d" "$target/fwatchdog.d.manual"
        fi
        ln -s "$dir" "$target/.fwatchdog-tmp.link.$$"
        mv -f -T "$target/.fwatchdog-tmp.link.$$" "$target/fwatchdog.d"
        changed=yes
    fi

    if ! cmp -s "$bundle/fwatchdog" "$target/fwatchdog"; then
        put "$bundle/fwatchdog" fwatchdog
        changed=yes
    fi

    if [ "$changed" = yes ]; then
        say "installed $id: $target/fwatchdog is this gateway; pods started from now on run it"
    else
        say "$id already installed: nothing to do"
    fi
}

rollback() {
    check_volume
    go="$target/fwatchdog.go"
    [ -f "$go" ] || die "no fwatchdog.go in $target: nothing to roll back to"
    is_bundle "$go" && die "$go is not the Go watchdog"
    if cmp -s "$go" "$target/fwatchdog"; then
        say "fwatchdog is already the Go watchdog: nothing to do"
        return
    fi
    # fwatchdog.d stays: pods running the gateway keep it until they end.
    put "$go" fwatchdog
    say "rolled back: $target/fwatchdog is the Go watchdog; pods started from now on run it"
}

# Every bundle folder but the one fwatchdog.d names: run it once no pod started before
# the last install still runs (each loads its modules from its own folder).
prune() {
    check_volume
    current=$(readlink "$target/fwatchdog.d" 2>/dev/null || true)
    [ -n "$current" ] || die "fwatchdog.d is not a link to an installed bundle: nothing to keep"
    pruned=0
    for old in "$target"/fwatchdog.d.*; do
        name=${old##*/}
        if [ -e "$old" ] && [ "$name" != "$current" ]; then
            rm -rf "$old"
            pruned=$((pruned + 1))
        fi
    done
    say "removed $pruned earlier bundle folder(s); kept $current"
}

status() {
    say "fwatchdog: $(describe fwatchdog); fwatchdog.go: $(describe fwatchdog.go)"
}

case "${1:-install}" in
    install) install ;;
    rollback) rollback ;;
    status) status ;;
    prune) prune ;;
    *) die "usage: install.sh [install|rollback|status|prune]" ;;
esac
