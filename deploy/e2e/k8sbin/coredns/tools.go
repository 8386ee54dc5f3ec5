//go:build tools

// Package corednsbin only records, for `go mod tidy`, that this module
// builds CoreDNS's main package. The tools tag keeps it out of every build.
package corednsbin

import _ "github.com/coredns/coredns"
