#!/bin/sh
# Text in, a binary file out, like the text-to-speech example.
exec "$PYTHON" "$(dirname "$0")/tts.py"
