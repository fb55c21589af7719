// Command stackpro-sim runs a fleet of simulated agents against a StackPro
// control plane, for benchmarks and tests of fleet commands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stackpro/stackpro/controlplane/internal/fleetsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := fleetsim.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "stackpro-sim: %v\n", err)
		os.Exit(1)
	}
}
