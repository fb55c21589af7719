package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/config"
	"github.com/stackpro/stackpro/controlplane/internal/monitor"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	dashboardapi "github.com/stackpro/stackpro/dashboard-api"
	"github.com/stackpro/stackpro/shared/protocol"
)

// The two figures issue 7 asks of dashboard-api, measured in-process with
// the parts Run wires: a bbolt store, the embedded broker, the monitor,
// the fleet tracker, watcher and feed, the accounts signer behind the
// tokens adapter, and the API's own router on a loopback listener.

// liveFleet is the control plane's live state as Run wires it.
type liveFleet struct {
	st      *store.Store
	tracker *fleet.Tracker
	feed    *fleet.Feed
	brk     *broker.Broker
	mon     *monitor.Monitor
	signer  *accounts.Signer
	ids     []string        // instance i belongs to customer benchCustomer(i)
	keys    []nkeys.KeyPair // instance i's agent key, when agents were asked for
}

func benchInstanceID(i int) string { return fmt.Sprintf("i-%017x", i) }
func benchCustomer(i int) string   { return fmt.Sprintf("cus_%05d", i) }

const benchAgentVersion = "v0.9.0-bench"

// startLiveFleet runs a store, the embedded broker, the monitor and the
// watcher over n enrolled, active instances, one per customer, until the
// benchmark ends. With agents, each instance has an NKey the broker lets
// in, as enrollment leaves it.
func startLiveFleet(b *testing.B, n int, agents bool) *liveFleet {
	b.Helper()
	dir := b.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(filepath.Join(dir, "stackpro.db"), 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	lf := &liveFleet{st: st, ids: make([]string, n)}
	insts := make([]fleet.Instance, n)
	creds := map[string]string{}
	for i := range n {
		id := benchInstanceID(i)
		lf.ids[i] = id
		insts[i] = fleet.Instance{ID: id, Provider: "ec2", CreatedAt: now.Add(-time.Hour), Customer: benchCustomer(i),
			Plan: "starter", Subdomain: fmt.Sprintf("c%05d", i), InstanceType: "t3.small", Region: "eu-west-1",
			ProviderID: id, Address: "10.0.0.1", Lifecycle: fleet.LifecycleActive, EnrolledAt: now.Add(-time.Hour), LastSeen: now}
		if agents {
			kp, err := nkeys.CreateUser()
			if err != nil {
				b.Fatal(err)
			}
			pub, _ := kp.PublicKey()
			creds[pub] = id
			lf.keys = append(lf.keys, kp)
		}
	}
	if err := st.PutInstances(insts...); err != nil {
		b.Fatal(err)
	}
	def := config.Default()
	lf.tracker = fleet.NewTracker(fleet.Thresholds{StaleAfter: def.Fleet.StaleAfter, OfflineAfter: def.Fleet.OfflineAfter}, insts)
	lf.feed = fleet.NewFeed(feedSize, feedBuffer)
	watcher := fleet.NewWatcher(lf.tracker, lf.feed)

	key, err := st.CommandKey()
	if err != nil {
		b.Fatal(err)
	}
	lf.brk, err = broker.Start(context.Background(), broker.Options{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "jetstream"),
		Credentials: creds, Tokens: st, CommandKey: key, Presence: lf.tracker, Log: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(lf.brk.Shutdown)
	lf.brk.Open()
	lf.mon = monitor.New(monitor.Options{Tracker: lf.tracker, Store: st, Publisher: lf.feed, Conn: lf.brk.Conn(),
		PersistEvery: 5 * time.Second, Log: log})
	if lf.signer, err = accounts.NewSigner(st, accounts.SignerOptions{Issuer: "http://bench", Audience: audience}); err != nil {
		b.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	if err := lf.mon.Start(ctx); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := lf.mon.Run(ctx); err != nil {
			b.Errorf("monitor: %v", err)
		}
	})
	wg.Go(func() { _ = watcher.Run(ctx, time.Second) })
	b.Cleanup(func() { cancel(); wg.Wait() })
	// The monitor is subscribed once Start returns: nothing needs a
	// heartbeat to find out (one would also be a change the event
	// streams opened later never show).
	return lf
}

// api is dashboard-api over lf as Run wires it, with the default limits;
// what these benchmarks do not call is left out.
func (lf *liveFleet) api(b *testing.B) http.Handler {
	b.Helper()
	auth := config.Default().Auth
	api, err := dashboardapi.New(dashboardapi.Options{Fleet: lf.tracker, Feed: lf.feed, Metrics: lf.mon,
		Tokens: tokens{lf.st, lf.signer}, Registry: prometheus.NewRegistry(),
		Limits: dashboardapi.AuthLimits{PerIP: dashboardapi.Limit(auth.PerIP), PerAccount: dashboardapi.Limit(auth.PerAccount)},
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	return api.Handler()
}

// benchHeartbeat is a heartbeat as an agent running the starter stack sends it.
func benchHeartbeat(id string, seq uint64, health protocol.Health) protocol.Heartbeat {
	started := time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second)
	hb := protocol.Heartbeat{V: protocol.Version, InstanceID: id, Seq: seq, At: time.Now().UTC(), AgentVersion: benchAgentVersion,
		Health: health, Stack: &protocol.StackStatus{AppliedVersion: 3, ComposeTool: "docker compose", Services: []protocol.ServiceState{
			{Service: "crm", State: "running", Health: "healthy", StartedAt: started},
			{Service: "files", State: "running", Health: "healthy", StartedAt: started},
			{Service: "email", State: "running", StartedAt: started},
		}}}
	if health == protocol.HealthDegraded {
		hb.Problems = []string{"disk / is 93% full"}
	}
	return hb
}

// benchMetrics is a metrics sample of a small machine.
func benchMetrics(id string) protocol.Metrics {
	return protocol.Metrics{V: protocol.Version, InstanceID: id, At: time.Now().UTC(), CPUPercent: 12.5,
		Load:   protocol.Load{One: 0.3, Five: 0.2, Fifteen: 0.1},
		Memory: protocol.Memory{TotalBytes: 2 << 30, UsedBytes: 900 << 20, AvailableBytes: 1100 << 20},
		Disks: []protocol.Disk{{Mount: "/", FSType: "ext4", TotalBytes: 40 << 30, UsedBytes: 12 << 30, FreeBytes: 28 << 30},
			{Mount: "/boot/efi", FSType: "vfat", TotalBytes: 100 << 20, UsedBytes: 6 << 20, FreeBytes: 94 << 20}},
		Network: protocol.Network{RxBytes: 7 << 30, TxBytes: 3 << 30}, UptimeSeconds: 86400}
}

func publishBench(b *testing.B, nc *nats.Conn, subject string, v any) {
	b.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	if err := nc.Publish(subject, data); err != nil {
		b.Fatal(err)
	}
}

// waitBench polls cond until it holds, for at most a minute.
func waitBench(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// percentile is the q-quantile (0 < q ≤ 1) of sorted, nearest rank.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkStatusEndpoint measures GET /api/v1/customers/{id}/status — a
// customer's access token (EdDSA JWT) verified per request through the
// tokens adapter, the customer's instance read from a tracker of 10,000
// instances with a stack of 3 services each, the latest metrics sample
// from the monitor — against a bare chi route answering a small fixed
// JSON body, both on loopback listeners, under the same closed-loop load:
// C clients on keep-alive connections, each sending its next request as
// soon as the last is answered, every request for a random customer with
// that customer's own token. The two take turns in 1 s slices, 5 each, so
// that whatever else the machine is doing weighs on both alike. C = 32
// keeps both servers saturated, for the throughput; C = 4 shows the
// latency with a short queue. The clients run in the same process, on the
// same 2 cores. Run it with -benchtime 1x.
func BenchmarkStatusEndpoint(b *testing.B) {
	n, slice, turns := 10_000, time.Second, 5
	if testing.Short() { // make test's smoke run
		n, slice, turns = 200, 200*time.Millisecond, 1
	}
	lf := startLiveFleet(b, n, false)
	// Every agent has reported its stack in a heartbeat and sent a sample,
	// through the broker and the monitor as in production.
	nc := lf.brk.Conn()
	for i, id := range lf.ids {
		publishBench(b, nc, protocol.AgentSubject(id, protocol.KindHeartbeat), benchHeartbeat(id, 2, protocol.HealthOK))
		publishBench(b, nc, protocol.AgentSubject(id, protocol.KindMetrics), benchMetrics(id))
		if i%1000 == 999 {
			if err := nc.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	waitBench(b, "every instance online with a metrics sample", func() bool {
		if lf.mon.Samples() < uint64(n) {
			return false
		}
		online := 0
		for _, inst := range lf.tracker.List(time.Now()) {
			if inst.Status == fleet.StatusOnline && inst.Stack != nil {
				online++
			}
		}
		return online == n
	})

	// Each customer's access token, signed as a login signs it.
	auths := make([]string, n)
	for i := range n {
		tok, _, err := lf.signer.Sign(accounts.Claims{Role: accounts.RoleCustomer, CustomerID: benchCustomer(i), SessionID: "ses-bench",
			RegisteredClaims: jwt.RegisteredClaims{Subject: fmt.Sprintf("usr_%05d", i)}})
		if err != nil {
			b.Fatal(err)
		}
		auths[i] = "Bearer " + tok
	}
	statusSrv := httptest.NewServer(lf.api(b))
	b.Cleanup(statusSrv.Close)
	bareSrv := httptest.NewServer(bareJSON())
	b.Cleanup(bareSrv.Close)
	statusURLs := make([]string, n)
	for i := range n {
		statusURLs[i] = statusSrv.URL + "/api/v1/customers/" + benchCustomer(i) + "/status"
	}
	statusURL := func(i int) string { return statusURLs[i] }
	bareURL := func(int) string { return bareSrv.URL + "/status" }

	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 32,
		IdleConnTimeout: time.Minute}, Timeout: 10 * time.Second}
	b.Cleanup(client.CloseIdleConnections)
	checkStatusAnswer(b, client, statusURLs[42], auths[42], benchCustomer(42))

	for _, clients := range []int{32, 4} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			drive(client, clients, slice/2, bareURL, auths) // warm up: connections, caches
			drive(client, clients, slice/2, statusURL, auths)
			var bare, status loadResult
			for b.Loop() {
				bare, status = loadResult{}, loadResult{}
				for range turns {
					bare.add(drive(client, clients, slice, bareURL, auths))
					status.add(drive(client, clients, slice, statusURL, auths))
				}
			}
			for name, l := range map[string]*loadResult{"bare": &bare, "status": &status} {
				if l.failed > 0 {
					b.Fatalf("%s: %d of %d requests failed, first: %s", name, l.failed, l.failed+len(l.lat), l.firstErr)
				}
				slices.Sort(l.lat)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(status.rate(), "status-req/s")
			b.ReportMetric(bare.rate(), "bare-req/s")
			b.ReportMetric(status.rate()/bare.rate(), "ratio")
			b.ReportMetric(ms(percentile(status.lat, 0.50)), "status-p50-ms")
			b.ReportMetric(ms(percentile(status.lat, 0.99)), "status-p99-ms")
			b.ReportMetric(ms(percentile(bare.lat, 0.50)), "bare-p50-ms")
			b.ReportMetric(ms(percentile(bare.lat, 0.99)), "bare-p99-ms")
		})
	}
}

// bareJSON is the yardstick: a chi router with one route answering a
// small fixed JSON body with encoding/json.
func bareJSON() http.Handler {
	type answer struct {
		Status string `json:"status"`
		Plan   string `json:"plan"`
		Users  int    `json:"users"`
	}
	r := chi.NewRouter()
	r.Get("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer{Status: "online", Plan: "starter", Users: 3})
	})
	return r
}

// checkStatusAnswer checks that the status endpoint answers what the
// benchmark means to measure: the instance online, three services, metrics.
func checkStatusAnswer(b *testing.B, client *http.Client, url, auth, customer string) {
	b.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", auth)
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var got struct {
		CustomerID string            `json:"customer_id"`
		Status     fleet.Status      `json:"status"`
		Services   map[string]string `json:"services"`
		Metrics    *struct {
			StorageUsed uint64 `json:"storage_used"`
		} `json:"metrics"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &got) != nil || got.CustomerID != customer ||
		got.Status != fleet.StatusOnline || len(got.Services) != 3 || got.Metrics == nil || got.Metrics.StorageUsed == 0 {
		b.Fatalf("GET %s: %d %s", url, resp.StatusCode, raw)
	}
}

// loadResult is what a closed loop of clients measured.
type loadResult struct {
	lat      []time.Duration // each answered request's latency
	failed   int
	firstErr string
	took     time.Duration // wall time, summed over slices
}

func (l *loadResult) add(o loadResult) {
	l.lat = append(l.lat, o.lat...)
	l.failed += o.failed
	l.took += o.took
	if l.firstErr == "" {
		l.firstErr = o.firstErr
	}
}

// rate is requests answered per second.
func (l *loadResult) rate() float64 { return float64(len(l.lat)) / l.took.Seconds() }

// drive runs clients closed loops for d: each sends a GET of url(i) for a
// random customer i with that customer's authorization, reads the whole
// answer, and sends the next. A request that fails or answers anything
// but 200 counts as failed.
func drive(client *http.Client, clients int, d time.Duration, url func(i int) string, auths []string) loadResult {
	var (
		mu    sync.Mutex
		total loadResult
		wg    sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), uint64(start.UnixNano())))
			l := loadResult{lat: make([]time.Duration, 0, 8192)}
			for time.Now().Before(deadline) {
				i := rng.IntN(len(auths))
				req, err := http.NewRequest(http.MethodGet, url(i), nil)
				if err != nil {
					panic(err)
				}
				req.Header.Set("Authorization", auths[i])
				t0 := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("GET %s: %s", req.URL.Path, resp.Status)
					}
				}
				if err != nil {
					l.failed++
					if l.firstErr == "" {
						l.firstErr = err.Error()
					}
					continue
				}
				l.lat = append(l.lat, time.Since(t0))
			}
			mu.Lock()
			defer mu.Unlock()
			total.add(l)
		})
	}
	wg.Wait()
	total.took = time.Since(start)
	return total
}

// BenchmarkHeartbeatToSSE measures how long a status change takes from an
// agent's heartbeat to a dashboard: 1,000 agents on their own NATS
// connections (NKeys the broker checks, over loopback TCP) publish
// heartbeats that alternate each instance's health between ok and
// degraded, so every heartbeat changes its status; the monitor, the
// tracker, the watcher and the feed turn it into an instance change, and
// one operator's GET /api/v1/events streams it. The latency is from the
// publish to the frame with that instance and status read by the client.
// Heartbeats go out evenly at 1,000/s (one per agent per second: what
// 10,000 agents send at the default 10 s), 10 rounds of the fleet. Run it
// with -benchtime 1x.
func BenchmarkHeartbeatToSSE(b *testing.B) {
	n, rounds := 1000, 10
	if testing.Short() { // make test's smoke run
		n, rounds = 100, 2
	}
	const rate = 1000 // heartbeats per second
	lf := startLiveFleet(b, n, true)
	token, err := lf.st.CreateAPIToken("bench", accounts.RoleOperator, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(lf.api(b))
	b.Cleanup(srv.Close)

	m := newSSEMatcher(lf.ids)
	ctx, cancel := context.WithCancel(context.Background())
	// followed is closed when the follower ends; before that, followErr
	// is not read.
	followed := make(chan struct{})
	var followErr error
	go func() { defer close(followed); followErr = m.follow(ctx, srv.URL+"/api/v1/events", token) }()
	b.Cleanup(func() { cancel(); <-followed })

	// The agents connect and report a healthy stack, and the stream shows
	// all of that before the clock starts. It must be open before the
	// first agent comes: a stream shows the changes after it opened.
	select {
	case <-m.opened:
	case <-followed:
		b.Fatalf("following the event stream: %v", followErr)
	}
	conns := make([]*nats.Conn, n)
	for i, id := range lf.ids {
		kp := lf.keys[i]
		pub, _ := kp.PublicKey()
		nc, err := nats.Connect(lf.brk.ClientURL(), nats.Name(id), nats.Nkey(pub, kp.Sign),
			nats.CustomInboxPrefix(protocol.InboxPrefix(id)))
		if err != nil {
			b.Fatalf("agent %s: %v", id, err)
		}
		conns[i] = nc
	}
	b.Cleanup(func() {
		for _, nc := range conns {
			nc.Close()
		}
	})
	for i, id := range lf.ids {
		publishBench(b, conns[i], protocol.AgentSubject(id, protocol.KindHeartbeat), benchHeartbeat(id, 2, protocol.HealthOK))
	}
	waitBench(b, "the stream to show every agent online", func() bool {
		select {
		case <-followed:
			b.Fatalf("following the event stream: %v", followErr)
		default:
		}
		return m.settled()
	})

	subjects := make([]string, n)
	for i, id := range lf.ids {
		subjects[i] = protocol.AgentSubject(id, protocol.KindHeartbeat)
	}
	var sent int
	var took time.Duration
	_, _, _, warmReconnects := m.result()
	b.Logf("warm-up (1,000 agents connecting and reporting at once): the server dropped the stream %d times", warmReconnects)
	for b.Loop() {
		m.reset()
		start := time.Now()
		for k := range rounds * n {
			i, round := k%n, k/n
			health, status := protocol.HealthDegraded, fleet.StatusDegraded
			if round%2 == 1 {
				health, status = protocol.HealthOK, fleet.StatusOnline
			}
			data, err := json.Marshal(benchHeartbeat(lf.ids[i], uint64(3+round), health))
			if err != nil {
				b.Fatal(err)
			}
			if wait := time.Until(start.Add(time.Duration(k) * time.Second / rate)); wait > 0 {
				time.Sleep(wait)
			}
			m.expect(i, status, time.Now())
			if err := conns[i].Publish(subjects[i], data); err != nil {
				b.Fatal(err)
			}
		}
		took = time.Since(start)
		sent = rounds * n
		// Give the last ones time to arrive; a heartbeat 10 s late is lost.
		deadline := time.Now().Add(10 * time.Second)
		for m.waiting() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	lat, lost, unexpected, reconnects := m.result()
	slices.Sort(lat)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(sent), "heartbeats")
	b.ReportMetric(float64(sent)/took.Seconds(), "heartbeats/s")
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(lat, 1)), "max-ms")
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(float64(reconnects), "reconnects")
	if lost > 0 || unexpected > 0 {
		b.Errorf("%d of %d heartbeats never reached the stream as their status; %d frames matched no heartbeat", lost, sent, unexpected)
	}
	select {
	case <-followed:
		b.Fatalf("following the event stream: %v", followErr)
	default:
	}
}

// sseMatcher pairs each instance frame of the event stream with the
// heartbeat that caused it: the oldest heartbeat of that instance still
// waiting whose status the frame shows. Heartbeats it skips are lost
// (their change was never streamed on its own).
type sseMatcher struct {
	index map[string]int
	// opened is closed once the server has taken the first stream: it
	// subscribes to the feed before it answers.
	opened     chan struct{}
	openedOnce sync.Once

	mu         sync.Mutex
	pending    [][]sentBeat // per instance, oldest first
	last       []instanceFrame
	lat        []time.Duration
	lost       int
	unexpected int
	reconnects int
}

type sentBeat struct {
	status fleet.Status
	at     time.Time
}

// instanceFrame is what the benchmark reads of an instance event.
type instanceFrame struct {
	ID           string       `json:"id"`
	Status       fleet.Status `json:"status"`
	AgentVersion string       `json:"agent_version"`
}

func newSSEMatcher(ids []string) *sseMatcher {
	m := &sseMatcher{index: make(map[string]int, len(ids)), pending: make([][]sentBeat, len(ids)),
		last: make([]instanceFrame, len(ids)), opened: make(chan struct{})}
	for i, id := range ids {
		m.index[id] = i
	}
	return m
}

// follow reads the event stream at url as the ops console does, until
// ctx ends: a stream the server drops is resumed with Last-Event-ID after
// 0.5–1 s. A reset (the resume point was lost) is an error.
func (m *sseMatcher) follow(ctx context.Context, url, token string) error {
	var lastID string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		m.openedOnce.Do(func() { close(m.opened) })
		lastID, err = m.read(resp.Body, lastID)
		resp.Body.Close()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		m.mu.Lock()
		m.reconnects++
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500*time.Millisecond + rand.N(500*time.Millisecond)):
		}
	}
}

// read reads one stream until it ends and returns the last event id seen.
func (m *sseMatcher) read(body io.Reader, lastID string) (string, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var event string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			event = ""
		case strings.HasPrefix(line, "id: "):
			lastID = line[len("id: "):]
		case strings.HasPrefix(line, "event: "):
			event = line[len("event: "):]
			if event == "reset" {
				return lastID, errors.New("the stream was reset: changes were missed")
			}
		case strings.HasPrefix(line, "data: ") && event == fleet.ChangeInstance:
			at := time.Now()
			var f instanceFrame
			if err := json.Unmarshal([]byte(line[len("data: "):]), &f); err != nil {
				return lastID, fmt.Errorf("instance frame: %w", err)
			}
			m.frame(f, at)
		}
	}
	return lastID, nil // dropped by the server, or ended by ctx
}

func (m *sseMatcher) frame(f instanceFrame, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i, ok := m.index[f.ID]
	if !ok {
		m.unexpected++
		return
	}
	m.last[i] = f
	q := m.pending[i]
	for j, s := range q {
		if s.status == f.Status {
			m.lat = append(m.lat, at.Sub(s.at))
			m.lost += j
			m.pending[i] = q[j+1:]
			return
		}
	}
	m.unexpected++
}

// settled reports whether the stream has shown every instance online
// with the agent's report.
func (m *sseMatcher) settled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range m.last {
		if f.Status != fleet.StatusOnline || f.AgentVersion != benchAgentVersion {
			return false
		}
	}
	return true
}

// reset forgets what the warm-up left.
func (m *sseMatcher) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.pending)
	m.lat, m.lost, m.unexpected, m.reconnects = nil, 0, 0, 0
}

// expect notes that instance i was sent a heartbeat at at that should
// show as status.
func (m *sseMatcher) expect(i int, status fleet.Status, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pending[i] = append(m.pending[i], sentBeat{status: status, at: at})
}

// waiting is how many heartbeats have not been streamed yet.
func (m *sseMatcher) waiting() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, q := range m.pending {
		n += len(q)
	}
	return n
}

// result is the latencies of the heartbeats streamed, how many were lost,
// how many frames matched no heartbeat, and how often the server dropped
// the stream.
func (m *sseMatcher) result() (lat []time.Duration, lost, unexpected, reconnects int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	lost = m.lost
	for _, q := range m.pending {
		lost += len(q)
	}
	return slices.Clone(m.lat), lost, m.unexpected, m.reconnects
}
