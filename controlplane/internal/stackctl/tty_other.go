//go:build !linux && !darwin

package stackctl

import (
	"context"
	"errors"
	"os"
)

// isTerminal is false where stackctl does not know how to ask: progress
// is then shown as plain lines.
func isTerminal(*os.File) bool { return false }

// readSecret is never called where isTerminal is false.
func readSecret(context.Context, *os.File) (string, error) {
	return "", errors.New("terminal: reading a secret is not supported here")
}
