package testenv

import (
	"strings"
	"testing"
)

func TestIsTrue(t *testing.T) {
	tests := []struct {
		v    string
		want bool
	}{
		{"", false},
		{"true", true},
		{"TRUE", true},
		{"True", true},
		{"tRuE", true},
		{"t", true},
		{"T", true},
		{"1", true},
		{"yes", true},
		{"YES", true},
		{"Yes", true},
		{" true\n", true},
		{"false", false},
		{"FALSE", false},
		{"0", false},
		{"no", false},
		{"f", false},
		{"2", false},
		{"y", false},
		{"on", false},
		{"ci", false},
	}
	for _, tt := range tests {
		if got := isTrue(tt.v); got != tt.want {
			t.Errorf("isTrue(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

// ended is a testing.TB that records how Missing ended it instead of
// ending the test that runs Missing.
type ended struct {
	testing.TB
	skipped, failed string
}

func (e *ended) Helper()           {}
func (e *ended) Skip(args ...any)  { e.skipped = args[0].(string) }
func (e *ended) Fatal(args ...any) { e.failed = args[0].(string) }

func TestMissing(t *testing.T) {
	const why = "no frobnicator here (apt-get install frobnicator)"
	for _, tt := range []struct {
		ci         string
		skip, fail bool
	}{
		{"", true, false},
		{"false", true, false},
		{"true", false, true},
		{"1", false, true},
		{"yes", false, true},
	} {
		t.Run("CI="+tt.ci, func(t *testing.T) {
			t.Setenv("CI", tt.ci)
			e := &ended{TB: t}
			Missing(e, why)
			if skipped := e.skipped != ""; skipped != tt.skip || (skipped && e.skipped != why) {
				t.Errorf("skipped with %q, want skip=%v with %q", e.skipped, tt.skip, why)
			}
			if failed := e.failed != ""; failed != tt.fail || (failed && !strings.Contains(e.failed, why)) {
				t.Errorf("failed with %q, want fail=%v saying %q", e.failed, tt.fail, why)
			}
		})
	}
}
