#!/bin/sh
# Word count: lines, words and bytes of the request body, and which path was asked.
printf '%s %s: ' "$Http_Method" "$Http_Path"
wc
