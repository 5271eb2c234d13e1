#!/bin/sh
# Two output files, one in a subfolder: they come back as a zip.
mkdir "$TMP_OUTPUT_DIR/sub"
tr 'a-z' 'A-Z' < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/upper.txt"
wc -c < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/sub/size.txt"
