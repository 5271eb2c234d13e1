#!/bin/sh
# An OSCAR service script: reads $INPUT_FILE_PATH, writes its result into
# $TMP_OUTPUT_DIR (one file: it comes back base64-encoded).
text=$(cat "$INPUT_FILE_PATH")
line=$(printf '%s' "$text" | sed 's/./-/g')
{
  echo " -$line-"
  echo "< $text >"
  echo " -$line-"
  echo "    \\   ^__^"
  echo "     \\  (oo)\\_______"
  echo "        (__)\\       )\\/\\"
  echo "            ||----w |"
  echo "            ||     ||"
} > "$TMP_OUTPUT_DIR/said.txt"
