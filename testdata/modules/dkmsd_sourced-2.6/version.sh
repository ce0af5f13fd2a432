#!/bin/sh
# The module's version, read from its source (run from the package dir).
sed -n 's/^MODULE_VERSION("\(.*\)");$/\1/p' dkmsd_sourced.c
