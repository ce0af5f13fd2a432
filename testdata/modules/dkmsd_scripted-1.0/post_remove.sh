#!/bin/sh
# dkmsd test fixture: post_remove script. Appends "post_remove" to the marker file $1.
if [ -z "$1" ]; then
	echo "post_remove.sh: usage: post_remove.sh MARKER_FILE" >&2
	exit 1
fi
echo post_remove >> "$1"
echo "dkmsd_scripted post_remove: appended to $1"
