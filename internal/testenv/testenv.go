// Package testenv decides what a test does when the machine lacks a
// dependency it needs (the Docker engine, a compose tool, stripe-mock,
// Chromium, promtool): it skips, saying why, except under CI, where every
// dependency must be there and a missing one fails the test.
package testenv

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// CI reports whether the tests run under CI: the CI environment variable
// holds a true value.
func CI() bool { return isTrue(os.Getenv("CI")) }

// isTrue reads v as strconv.ParseBool does, in any case, and takes "yes"
// too: CI services set CI=true, CI=1 or CI=yes.
func isTrue(v string) bool {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "yes" {
		return true
	}
	b, err := strconv.ParseBool(v)
	return err == nil && b
}

// Missing ends t for a dependency this machine lacks; why says which, and
// how to get it. Outside CI it skips t; under CI it fails t.
func Missing(t testing.TB, why string) {
	t.Helper()
	if CI() {
		t.Fatal("CI is set, and a test dependency is missing: " + why)
	} else {
		t.Skip(why)
	}
}
