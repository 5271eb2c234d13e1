#!/bin/sh
# What the script's world looks like: its variables and its folders' modes.
env | sort > "$TMP_OUTPUT_DIR/env.txt"
stat -c '%a %n' "$TMP_INPUT_DIR" "$TMP_OUTPUT_DIR" "$(dirname "$TMP_INPUT_DIR")" >> "$TMP_OUTPUT_DIR/env.txt"
