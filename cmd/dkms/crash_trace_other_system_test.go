//go:build systemtest && !amd64

package main

// legacyStepCalls: the other architectures have only the *at calls.
var legacyStepCalls = map[uint64]stepCall{}
