module github.com/dkmsd/dkmsd

go 1.26.8

require (
	github.com/klauspost/compress v1.20.3
	github.com/ulikunitz/xz v0.5.17
	golang.org/x/sys v0.49.0
	golang.org/x/term v0.45.0
	mvdan.cc/sh/v3 v3.14.1
)
