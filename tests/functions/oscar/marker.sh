#!/bin/sh
# Leaves a mark that it ran, then copies its input.
touch "$MARKER"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"
