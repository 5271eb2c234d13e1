#!/bin/sh
# An image-copying service: the input file comes back as the only output file.
echo "copying $(wc -c < "$INPUT_FILE_PATH") bytes"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result.png"
