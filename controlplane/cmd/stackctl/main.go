// Command stackctl is the operators' command line for the StackPro fleet.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/stackpro/stackpro/controlplane/internal/stackctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := stackctl.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
