#!/bin/sh
# Tries to smuggle files from outside TMP_OUTPUT_DIR into the answer.
echo inside > "$TMP_OUTPUT_DIR/inside.txt"
ln -s /etc/hostname "$TMP_OUTPUT_DIR/outside-link"
ln -s / "$TMP_OUTPUT_DIR/root-dir"
ln -s inside.txt "$TMP_OUTPUT_DIR/inside-link"
mkfifo "$TMP_OUTPUT_DIR/fifo"
