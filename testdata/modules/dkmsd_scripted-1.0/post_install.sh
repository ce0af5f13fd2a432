#!/bin/sh
# dkmsd test fixture: post_install script. Appends "post_install" to the marker file $1.
if [ -z "$1" ]; then
	echo "post_install.sh: usage: post_install.sh MARKER_FILE" >&2
	exit 1
fi
echo post_install >> "$1"
echo "dkmsd_scripted post_install: appended to $1"
