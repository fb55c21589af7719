// Command stackpro-demo is the stand-in service of the starter stack (a CRM
// and a file service in the demo), small enough to ship in an image built
// FROM scratch: it serves a page and /healthz, and is its own healthcheck
// probe, since a scratch image has no curl.
//
//	stackpro-demo [-name crm] [-addr :8080]   serve
//	stackpro-demo check http://127.0.0.1:8080/healthz   exit 0 if healthy
//
// With STACKPRO_DEMO_UNHEALTHY=1 in its environment /healthz fails, which
// the tests use to make a version that never turns healthy.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2]))
	}
	name := flag.String("name", "demo", "the service's name, shown on its page")
	addr := flag.String("addr", ":8080", "listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *name, *addr, os.Getenv("STACKPRO_DEMO_UNHEALTHY") == "1"); err != nil {
		fmt.Fprintf(os.Stderr, "stackpro-demo: %v\n", err)
		os.Exit(1)
	}
}

func serve(ctx context.Context, name, addr string, unhealthy bool) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if unhealthy {
			http.Error(w, "unhealthy on purpose", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "StackPro demo service %q\n", name)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	fmt.Printf("stackpro-demo %s listening on %s\n", name, addr)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}

func check(url string) int {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, resp.Status)
		return 1
	}
	return 0
}
