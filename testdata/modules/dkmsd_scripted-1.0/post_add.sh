#!/bin/sh
# dkmsd test fixture: post_add script. Appends "post_add" to the marker file $1.
if [ -z "$1" ]; then
	echo "post_add.sh: usage: post_add.sh MARKER_FILE" >&2
	exit 1
fi
echo post_add >> "$1"
echo "dkmsd_scripted post_add: appended to $1"
