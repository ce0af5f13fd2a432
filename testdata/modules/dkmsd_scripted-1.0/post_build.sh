#!/bin/sh
# dkmsd test fixture: POST_BUILD. dkms runs it with the build directory as
# the working directory, after the module was built.
# Optional $1: marker file to append "post_build" to.
if [ -n "$1" ]; then
	echo post_build >> "$1"
fi
if [ -f dkmsd_scripted.ko ]; then
	echo "dkmsd_scripted post_build: dkmsd_scripted.ko present"
else
	echo "dkmsd_scripted post_build: dkmsd_scripted.ko missing"
fi
