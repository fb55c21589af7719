// Package server wires the control plane together: configuration, store,
// embedded broker, fleet monitor, provisioning, accounts, billing and
// dashboard-api, with one lifecycle that a signal ends.
package server

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/google/renameio/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/config"
	"github.com/stackpro/stackpro/controlplane/internal/monitor"
	"github.com/stackpro/stackpro/controlplane/internal/secrets"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/internal/targets"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/provision/ec2"
	"github.com/stackpro/stackpro/controlplane/provision/local"
	"github.com/stackpro/stackpro/controlplane/provision/route53"
	"github.com/stackpro/stackpro/controlplane/rollout/engine"
	dashboardapi "github.com/stackpro/stackpro/dashboard-api"
	"github.com/stackpro/stackpro/shared/buildinfo"
	"github.com/stackpro/stackpro/shared/protocol"
)

const usage = `usage: stackpro-controlplane <command> [flags]

commands:
  dev      run the embedded default: data dir created if missing, demo instances launched
  serve    run from a config file (--config); the data dir must exist
  version  print the version

flags (override the config file and STACKPRO_* environment variables):
`

// Main parses args and runs the control plane until ctx ends.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "stackpro-controlplane", buildinfo.String())
		return nil
	case "dev", "serve":
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
	cfg, err := load(cmd, args, stderr)
	if err != nil {
		return err
	}
	return Run(ctx, cfg, stdout)
}

// load layers defaults, the config file, the environment and flags.
func load(cmd string, args []string, stderr io.Writer) (config.Config, error) {
	cfg := config.Default()
	if cmd == "dev" {
		cfg.Dev, cfg.DemoInstances = true, 1
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	path := fs.String("config", "", "YAML config file")
	data := fs.String("data", cfg.DataDir, "data directory")
	httpAddr := fs.String("http", cfg.HTTP.Addr, "HTTP listen address")
	natsAddr := fs.String("nats", cfg.NATS.Listen, "NATS listen address")
	demo := fs.Int("demo-instances", cfg.DemoInstances, "local instances dev mode keeps launched")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *path != "" {
		if err := cfg.ReadFile(*path); err != nil {
			return cfg, err
		}
	}
	envErr := cfg.LoadEnv(os.Environ())
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "data":
			cfg.DataDir = *data
		case "http":
			cfg.HTTP.Addr = *httpAddr
		case "nats":
			cfg.NATS.Listen = *natsAddr
		case "demo-instances":
			cfg.DemoInstances = *demo
		}
	})
	if err := errors.Join(envErr, cfg.Validate()); err != nil {
		return cfg, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

func newLogger(cfg config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level)) // checked by Validate
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Run runs the control plane with cfg until ctx ends, then shuts down:
// stop taking requests, drain NATS, write the fleet state, close the store.
func Run(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	log := newLogger(cfg.Log, os.Stderr)
	if err := prepareDataDir(cfg); err != nil {
		return err
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "stackpro.db"), 5*time.Second)
	if err != nil {
		return err
	}
	defer st.Close()
	creds, err := st.Credentials()
	if err != nil {
		return err
	}
	insts, err := st.Instances()
	if err != nil {
		return err
	}
	tracker := fleet.NewTracker(fleet.Thresholds{StaleAfter: cfg.Fleet.StaleAfter, OfflineAfter: cfg.Fleet.OfflineAfter}, insts)
	// What dashboard-api streams: instance changes the watcher sees, job
	// steps and agent events as they are stored.
	feed := fleet.NewFeed(feedSize, feedBuffer)
	watcher := fleet.NewWatcher(tracker, feed)

	commandKey, err := st.CommandKey()
	if err != nil {
		return err
	}
	brk, err := broker.Start(ctx, broker.Options{Listen: cfg.NATS.Listen, StoreDir: filepath.Join(cfg.DataDir, "jetstream"),
		Credentials: creds, Tokens: st, CommandKey: commandKey, Presence: tracker, Log: log})
	if err != nil {
		return err
	}
	defer brk.Shutdown()

	js, err := jetstream.New(brk.Conn())
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	tgts, err := targets.Open(ctx, js, log)
	if err != nil {
		return err
	}
	mon := monitor.New(monitor.Options{Tracker: tracker, Store: st, Publisher: feed, Conn: brk.Conn(), PersistEvery: 5 * time.Second, Log: log})
	// Agents come in only once what they send is taken.
	if err := mon.Start(ctx); err != nil {
		return err
	}
	defer mon.Stop()
	brk.Open()
	runs := engine.New(engine.Options{Store: st, Fleet: tracker, Conn: brk.Conn(), Sealer: brk,
		CommandKey: commandKey, Log: log})
	awsConfig := sync.OnceValues(func() (aws.Config, error) { return loadAWS(ctx, cfg.AWS) })
	provider, dns, err := machines(cfg, awsConfig, st, log)
	if err != nil {
		return err
	}
	tokenKey, err := enrollmentKey(ctx, cfg, awsConfig)
	if err != nil {
		return err
	}
	plans := map[string]provision.Plan{}
	for name, p := range cfg.Plans {
		plans[name] = provision.Plan{Stack: p.Stack, InstanceType: p.InstanceType}
	}
	prov := provision.New(provision.Options{Provider: provider, DNS: dns, Store: st, Publisher: feed,
		Tracker: tracker, Broker: brk, Targets: tgts, Zone: cfg.Zone, Region: region(cfg), NATSURL: cfg.NATSURL(),
		TokenKey: tokenKey, TokenTTL: cfg.Enrollment.TokenTTL, Plans: plans, StackImage: cfg.Stacks.Image,
		HeartbeatInterval: cfg.Fleet.HeartbeatInterval, MetricsInterval: cfg.Fleet.MetricsInterval, CommandKey: brk.CommandKey(),
		Workers: cfg.Jobs.Workers, Attempts: cfg.Jobs.Attempts, RetryBase: cfg.Jobs.RetryBase, RetryMax: cfg.Jobs.RetryMax,
		WaitTimeout: cfg.Jobs.WaitTimeout, Faults: provision.Faults{CrashAfter: cfg.Faults.CrashAfterStep, Fail: cfg.Faults.FailStep, FailFor: cfg.Faults.FailFor},
		Log: log})

	// Local agents outlive the control plane: find them again. Demo
	// instances are local ones.
	localProvider, isLocal := provider.(*local.Provider)
	var localIDs []string
	if isLocal {
		for _, inst := range insts {
			if inst.Provider == localProvider.Name() {
				localIDs = append(localIDs, inst.ID)
			}
		}
		localProvider.Reattach(localIDs)
	}
	tokenPath, err := bootstrapAdminToken(st, cfg.DataDir)
	if err != nil {
		return err
	}

	sender, err := newMailSender(ctx, cfg, awsConfig)
	if err != nil {
		return err
	}
	accts, signer, err := newAccounts(cfg, st, sender, log)
	if err != nil {
		return err
	}
	bill, err := newBilling(ctx, cfg, st, sender, prov, tracker, awsConfig, log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(bill, mon, prov, runs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	limits := dashboardapi.AuthLimits{PerIP: dashboardapi.Limit(cfg.Auth.PerIP), PerAccount: dashboardapi.Limit(cfg.Auth.PerAccount)}
	api, err := dashboardapi.New(dashboardapi.Options{Fleet: tracker, Feed: feed, Metrics: mon, Events: st,
		Jobs: prov, Targets: targetsAPI{tgts},
		Commander: brk, Runs: runs, Tags: prov, Tokens: tokens{st, signer}, Auth: authAPI{accts, signer}, Limits: limits,
		Billing: bill, Plans: plansOnOffer(cfg), Prometheus: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Registry: reg, CORSOrigins: cfg.HTTP.CORSOrigins,
		Ready: map[string]dashboardapi.Check{"broker": brk.Ready, "store": st.Ready}, Log: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second}

	g, gctx := errgroup.WithContext(ctx)
	monCtx, stopMonitor := context.WithCancel(context.Background())
	defer stopMonitor()
	g.Go(func() error { return mon.Run(monCtx) })
	g.Go(func() error { return watcher.Run(gctx, time.Second) })
	g.Go(func() error { return prov.Run(gctx) })
	g.Go(func() error { return runs.Run(gctx) })
	g.Go(func() error { return bill.Run(gctx) })
	g.Go(func() error { pruneSessions(gctx, accts, log); return nil })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// The reverse of the start: agent traffic stops before the
		// monitor does (what it took is written, what it did not stays in
		// JetStream), and event streams end before the HTTP server waits
		// for its requests.
		brk.CloseAgents()
		stopMonitor()
		feed.Close()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	})
	if cfg.Dev && isLocal {
		for n := len(localIDs); n < cfg.DemoInstances; n++ {
			if _, _, err := prov.Provision("demo", "starter", ""); err != nil {
				log.Error("provisioning a demo instance", "err", err)
				break
			}
		}
	}
	fmt.Fprintf(stdout, "StackPro control plane %s is up\n  API:   http://%s/api/v1/instances\n  NATS:  %s\n  token: %s (use as Authorization: Bearer <token>)\n",
		buildinfo.String(), ln.Addr(), brk.ClientURL(), tokenPath)
	err = g.Wait()
	log.Info("control plane stopped")
	return err
}

// prepareDataDir creates the data dir in dev mode; otherwise it must exist.
func prepareDataDir(cfg config.Config) error {
	if cfg.Dev {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		return nil
	}
	info, err := os.Stat(cfg.DataDir)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("data dir %s does not exist: create it, or run dev mode", cfg.DataDir)
	}
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("data dir %s is not a directory", cfg.DataDir)
	}
	return nil
}

// loadAWS is the AWS SDK's configuration: credentials and the rest found
// the SDK's usual way, the region and an endpoint from cfg.
func loadAWS(ctx context.Context, cfg config.AWS) (aws.Config, error) {
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(cfg.Region)}
	if cfg.Endpoint != "" {
		opts = append(opts, awsconfig.WithBaseEndpoint(cfg.Endpoint))
	}
	c, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return c, fmt.Errorf("aws: %w", err)
	}
	return c, nil
}

// machines returns the provider and the DNS cfg chooses; awsConfig is
// called only for AWS's.
func machines(cfg config.Config, awsConfig func() (aws.Config, error), st *store.Store, log *slog.Logger) (provision.Provider, provision.DNS, error) {
	var provider provision.Provider
	if cfg.Provider == "ec2" {
		c, err := awsConfig()
		if err != nil {
			return nil, nil, err
		}
		amis := map[string]string{}
		for name, p := range cfg.Plans {
			amis[name] = p.AMI
		}
		a := cfg.AWS
		provider = ec2.New(c, ec2.Options{AMIs: amis, DefaultAMI: a.AMI, SubnetID: a.SubnetID, SecurityGroupIDs: a.SecurityGroupIDs,
			InstanceProfile: a.InstanceProfile, KeyName: a.KeyName, PublicAddress: a.PublicAddress, PollInterval: a.PollInterval, Log: log})
	} else {
		lp, err := local.New(filepath.Join(cfg.DataDir, "instances"), agentBin(cfg), log)
		if err != nil {
			return nil, nil, err
		}
		provider = lp
	}
	var dns provision.DNS = provision.StoreDNS{Store: st}
	if cfg.DNS == "route53" {
		c, err := awsConfig()
		if err != nil {
			return nil, nil, err
		}
		dns = route53.New(c, route53.Options{HostedZoneID: cfg.AWS.HostedZoneID, PollInterval: cfg.AWS.PollInterval})
	}
	return provider, dns, nil
}

// enrollmentKey is the key enrollment tokens are derived from: the secret
// enrollment.key refers to, or else the data dir's own.
func enrollmentKey(ctx context.Context, cfg config.Config, awsConfig func() (aws.Config, error)) ([]byte, error) {
	if cfg.Enrollment.Key == "" {
		return secretKey(filepath.Join(cfg.DataDir, "enrollment.key"))
	}
	key, err := secrets.Resolve(ctx, cfg.Enrollment.Key, awsConfig)
	if err != nil {
		return nil, fmt.Errorf("enrollment.key: %w", err)
	}
	if n := len(key.Reveal()); n < 32 {
		return nil, fmt.Errorf("enrollment.key: want at least 32 bytes, found %d", n)
	}
	return []byte(key.Reveal()), nil
}

// secretKey reads the 32-byte key at path, creating it (0600) on first start.
func secretKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		if err := renameio.WriteFile(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", path, err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%s: want 32 bytes, found %d", path, len(key))
	}
	return key, nil
}

// agentBin is the configured agent binary, or the one beside this binary.
func agentBin(cfg config.Config) string {
	if cfg.Local.AgentBin != "" {
		return cfg.Local.AgentBin
	}
	self, err := os.Executable()
	if err != nil {
		return "stackpro-agent"
	}
	return filepath.Join(filepath.Dir(self), "stackpro-agent")
}

// bootstrapAdminToken creates the first operator token when none exists
// and writes it to <data>/admin.token (0600). It returns the file's path.
func bootstrapAdminToken(st *store.Store, dataDir string) (string, error) {
	path := filepath.Join(dataDir, "admin.token")
	has, err := st.HasAPITokens()
	if err != nil || has {
		return path, err
	}
	token, err := st.CreateAPIToken("admin", accounts.RoleAdmin, time.Now().UTC())
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}

// targetsAPI serves the targets store to dashboard-api, which has a spec
// of its own.
type targetsAPI struct{ st *targets.Store }

func (t targetsAPI) SetTarget(ctx context.Context, id string, spec dashboardapi.TargetSpec) (protocol.Target, error) {
	return t.st.Set(ctx, id, targets.Spec{Compose: spec.Compose, Env: spec.Env, Files: spec.Files})
}

func (t targetsAPI) Target(ctx context.Context, id string) (protocol.Target, error) {
	return t.st.Get(ctx, id)
}

// Sizes of the feed: the changes it keeps for clients that reconnect, and
// how far behind one client may fall before it is made to reconnect.
const (
	feedSize   = 10000
	feedBuffer = 256
)

// region is where instances are launched, for the fleet overview.
func region(cfg config.Config) string {
	if cfg.Provider == "ec2" {
		return cfg.AWS.Region
	}
	return "local"
}
