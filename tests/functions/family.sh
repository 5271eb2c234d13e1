#!/bin/sh
# A function with a grandchild that ignores SIGTERM; both write their pids to
# $PIDS_DIR so that a test can look for them in the process table.
sh -c 'trap "" TERM; echo $$ > "$PIDS_DIR/grandchild"; exec sleep 300' &
echo $$ > "$PIDS_DIR/child"
wait
