#!/bin/sh
# No output file: the script's own output is the answer.
echo "input was: $(cat "$INPUT_FILE_PATH")"
echo "to stderr" >&2
