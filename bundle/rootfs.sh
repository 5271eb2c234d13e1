#!/usr/bin/env bash
# Root file systems the bundle's tests chroot into, built from Debian's packages and
# cached: bundle/rootfs.sh NAME [CACHE]   (CACHE: .tools/rootfs), prints the path.
#
#   busybox   Debian's busybox-static and nothing else: no libc, no loader, no
#             /lib at all. Stands in for Alpine (musl) and scratch images.
#   bullseye  Debian 11 minbase: glibc 2.31, the oldest glibc the bundle supports
#             (OSCAR's own example image, bitnami/minideb:bullseye, is 11).
#   trixie    Debian 13 minbase with curl: a glibc (2.41) newer than the bundle's,
#             and an image tool with its own libssl that must keep working in
#             functions.
#
# Idempotent: a finished tree carries .rootfs-complete and is reused as it is; a
# build goes to NAME.tmp and is renamed at the end, so an interrupted one is redone.
# Needs root (debootstrap, the chroot), apt-get, dpkg-deb and debootstrap. The
# mirror is the one this machine's apt uses, read at run time.
set -euo pipefail

name=${1:?usage: rootfs.sh busybox|bullseye|trixie [CACHE]}
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${2:-$here/.tools/rootfs}
dest=$cache/$name
if [[ -f $dest/.rootfs-complete ]]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache"
# one build at a time (test modules of several runs may ask at once); the one that
# waited finds the tree done
exec 9>"$cache/.$name.lock"
flock 9
if [[ -f $dest/.rootfs-complete ]]; then
  echo "$dest"
  exit 0
fi
tmp=$dest.tmp
rm -rf "$tmp"
mkdir -p "$tmp"

# The first Debian mirror of this machine's apt sources (deb822 or one-line form).
mirror() {
  local f url
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    url=$(awk '
      /^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }
      /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\// && $i !~ /security/) { print $i; exit } }
    ' "$f")
    if [[ -n $url ]]; then
      echo "$url"
      return
    fi
  done
  echo "no Debian mirror in /etc/apt/sources.list*" >&2
  return 1
}

# Mount points and the few files a pod's root has, whatever the image.
finish() {
  local root=$1
  mkdir -p "$root"/{proc,dev,sys,tmp,oscar/bin,oscar/config}
  chmod 1777 "$root/tmp"
  touch "$root/.rootfs-complete"
  rm -rf "$dest"
  mv "$root" "$dest"
  echo "$dest"
}

case $name in
  busybox)
    # apt-get download needs only the package lists (apt-get update), no install
    work=$(mktemp -d "$cache/.work.XXXXXX")
    chmod 755 "$work"  # apt downloads as _apt
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -qq busybox-static >/dev/null)
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/pkg"
    mkdir -p "$tmp/bin" "$tmp/etc"
    cp "$work/pkg/bin/busybox" "$tmp/bin/busybox"
    # one symbolic link per applet (sh, cat, env, wget, ...); busybox is static
    for applet in $("$tmp/bin/busybox" --list); do
      [[ $applet == busybox ]] || ln -sf busybox "$tmp/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' \
      >"$tmp/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
    finish "$tmp"
    ;;
  bullseye | trixie)
    include=()
    [[ $name == trixie ]] && include=(--include=curl)
    debootstrap --variant=minbase "${include[@]}" "$name" "$tmp" "$(mirror)" \
      >"$cache/$name.log" 2>&1 || {
      tail -20 "$cache/$name.log" >&2
      exit 1
    }
    # what the tests never need: apt's downloads and the documentation
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/usr/share/doc "$tmp"/usr/share/man
    finish "$tmp"
    ;;
  *)
    echo "unknown root file system: $name (busybox, bullseye, trixie)" >&2
    exit 2
    ;;
esac
