#!/bin/sh
# The function bench/compare_go.py runs under both watchdogs. It records what it was
# given as exec'd: its argv and environment from /proc (the shell's own view would add
# PWD and drop names that are not shell names, such as Http_X.Dot), and its stdin, in
# $PROBE_DIR/<pid>.*; then does what "$1 $2" says, or else the query ("exit=3"), and
# by default echoes its stdin.
out="$PROBE_DIR/$$"
cat /proc/$$/cmdline > "$out.argv"
cat /proc/$$/environ > "$out.env"
cat > "$out.stdin"
mode=$1
arg=$2
if [ -z "$mode" ]; then
  case "$Http_Query" in
    exit=*|signal=*|sleep=*) mode=${Http_Query%%=*}; arg=${Http_Query#*=} ;;
    stderr|background|html|png) mode=$Http_Query ;;
  esac
fi
case "$mode" in
  exit) cat "$out.stdin"; exit "$arg" ;;
  signal) kill -"$arg" $$ ;;
  sleep) sleep "$arg"; : > "$out.done"; echo slept ;;
  stderr) echo to stdout; echo to stderr >&2 ;;
  # Away from the answer's pipes, so that only the process group decides its fate.
  background) (sleep 1; : > "$PROBE_DIR/background.done") > /dev/null 2>&1 < /dev/null &
              echo started ;;
  html) printf '<!DOCTYPE html>\n<html><body>probe</body></html>\n' ;;
  png) printf '\211PNG\r\n\032\n\000\000\000\rIHDR\000\000\000\001' ;;
  *) cat "$out.stdin" ;;
esac
