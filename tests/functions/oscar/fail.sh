#!/bin/sh
echo "something broke"
exit 4
