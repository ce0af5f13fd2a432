#!/bin/sh
# dkmsd test fixture: pre_install script. Appends "pre_install" to the marker file $1.
if [ -z "$1" ]; then
	echo "pre_install.sh: usage: pre_install.sh MARKER_FILE" >&2
	exit 1
fi
echo pre_install >> "$1"
echo "dkmsd_scripted pre_install: appended to $1"
