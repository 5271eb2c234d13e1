#!/bin/sh
# Writes its pid to $PIDS_DIR/child (once per run, by a unique name too), then
# sleeps for ${SLEEP:-300} seconds and says so.
echo $$ > "$PIDS_DIR/child"
echo $$ > "$PIDS_DIR/child.$$"
sleep "${SLEEP:-300}"
echo slept
