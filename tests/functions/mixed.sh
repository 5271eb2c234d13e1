#!/bin/sh
# One function, many behaviours, chosen by the query string: for the soak.
case "$Http_Query" in
  ok) exec cat ;;
  fail) echo failing; exit 3 ;;
  slow) sleep 0.3; echo slow ;;
  crash) kill -KILL $$ ;;
  big) head -c 200000 /dev/zero ;;
  hang) sleep 30 ;;
  *) echo "unknown: $Http_Query"; exit 2 ;;
esac
