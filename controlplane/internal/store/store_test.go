package store_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/shared/protocol"
)

// t0 is the start of every test's clock; tests move it by hand, never wait.
var t0 = time.Date(2026, 11, 24, 15, 4, 5, 0, time.UTC)

// Agent public keys. Their form does not matter to the store.
const (
	keyA = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
	keyB = "UBKOYHIQ6NCW2XKOSAGIHZ6DKQF3ISTBUZU3QMWLOVQTCVC3SHNRP7UJ"
)

// openStore opens a store at path and closes it when the test ends.
// Closing it earlier is fine: a second Close does nothing.
func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	s, err := store.Open(path, time.Second)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// newStore opens a fresh store in a temporary directory and returns it with
// its file's path.
func newStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data.db")
	return openStore(t, path), path
}

func putInstances(t *testing.T, s *store.Store, ids ...string) {
	t.Helper()
	var insts []fleet.Instance
	for _, id := range ids {
		insts = append(insts, fleet.Instance{ID: id, Provider: "aws", CreatedAt: t0})
	}
	if err := s.PutInstances(insts...); err != nil {
		t.Fatalf("PutInstances(%v): %v", ids, err)
	}
}

func instances(t *testing.T, s *store.Store) []fleet.Instance {
	t.Helper()
	got, err := s.Instances()
	if err != nil {
		t.Fatalf("Instances: %v", err)
	}
	return got
}

func instanceIDs(t *testing.T, s *store.Store) []string {
	t.Helper()
	var ids []string
	for _, inst := range instances(t, s) {
		ids = append(ids, inst.ID)
	}
	return ids
}

func credentials(t *testing.T, s *store.Store) map[string]string {
	t.Helper()
	got, err := s.Credentials()
	if err != nil {
		t.Fatalf("Credentials: %v", err)
	}
	return got
}

func mint(t *testing.T, s *store.Store, instanceID string, ttl time.Duration, now time.Time) string {
	t.Helper()
	token, err := s.MintToken(instanceID, ttl, now)
	if err != nil {
		t.Fatalf("MintToken(%s): %v", instanceID, err)
	}
	return token
}

func redeem(t *testing.T, s *store.Store, instanceID, token, key string, now time.Time) {
	t.Helper()
	if err := s.RedeemToken(instanceID, token, key, now); err != nil {
		t.Fatalf("RedeemToken(%s, %s): %v", instanceID, key, err)
	}
}

func appendEvent(t *testing.T, s *store.Store, instanceID string, seq uint64) {
	t.Helper()
	ev := protocol.Event{V: protocol.Version, ID: fmt.Sprintf("evt-%d", seq), InstanceID: instanceID,
		At: t0, Type: protocol.EventAgentStarted, Severity: protocol.SeverityInfo, Message: "agent started"}
	if err := s.AppendEvent(ev, seq); err != nil {
		t.Fatalf("AppendEvent(%s, %d): %v", instanceID, seq, err)
	}
}

// eventIDs returns the ids of the last limit events of instanceID.
func eventIDs(t *testing.T, s *store.Store, instanceID string, limit int) []string {
	t.Helper()
	evs, err := s.InstanceEvents(instanceID, limit)
	if err != nil {
		t.Fatalf("Events(%s, %d): %v", instanceID, limit, err)
	}
	var ids []string
	for _, ev := range evs {
		ids = append(ids, ev.ID)
	}
	return ids
}

// checkSecretNotInFile closes s and checks that the raw file at path holds
// the SHA-256 of secret (so it is the file the record went to) and not the
// secret itself, with or without its readable prefix.
func checkSecretNotInFile(t *testing.T, s *store.Store, path, secret string) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(secret))
	if !bytes.Contains(raw, []byte(hex.EncodeToString(sum[:]))) {
		t.Fatalf("%s does not hold the hash of the secret: the record is not where the test looks", path)
	}
	_, random, _ := strings.Cut(secret, "_")
	if bytes.Contains(raw, []byte(random)) {
		t.Errorf("%s holds the secret %q in clear", path, secret)
	}
}

func TestOpenCreatesFileOwnerOnly(t *testing.T) {
	_, path := newStore(t)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("mode of %s = %v, want %v", path, got, fs.FileMode(0o600))
	}
}

func TestOpenLocked(t *testing.T) {
	first, path := newStore(t)

	_, err := store.Open(path, 100*time.Millisecond)
	if !errors.Is(err, bolterrors.ErrTimeout) {
		t.Fatalf("second Open = %v, want %v", err, bolterrors.ErrTimeout)
	}
	if !strings.Contains(err.Error(), "locked") {
		t.Errorf("second Open = %q, want a message saying the store is locked", err)
	}

	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	openStore(t, path) // the lock went with the first store
}

func TestOpenMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "data.db")
	s, err := store.Open(path, time.Second)
	if err == nil {
		s.Close()
		t.Fatalf("Open(%s) succeeded, want an error", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(%s) = %v, want an error wrapping %v", path, err, fs.ErrNotExist)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("Open(%s) = %q, want the message to name the file", path, err)
	}
}

func TestOpenNotABoltFile(t *testing.T) {
	tests := []struct {
		name    string
		content []byte
	}{
		{"short text", []byte("this is not a bbolt database\n")},
		{"pages of noise", bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 4096)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "data.db")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := store.Open(path, time.Second)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded on a file that is not a bbolt database", path)
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(after, tt.content) {
				t.Errorf("Open changed %s: %d bytes before, %d after", path, len(tt.content), len(after))
			}
		})
	}
}

func TestInstancesRoundTrip(t *testing.T) {
	s, _ := newStore(t)
	want := []fleet.Instance{
		{ID: "i-1", Provider: "aws", CreatedAt: t0, EnrolledAt: t0.Add(time.Minute),
			LastSeen: t0.Add(time.Hour), Connected: true, AgentVersion: "v0.1.0",
			Health: protocol.HealthDegraded, Problems: []string{"disk / is 93% full"}},
		{ID: "i-2", Provider: "hetzner", CreatedAt: t0.Add(time.Second)},
	}
	if err := s.PutInstances(want...); err != nil {
		t.Fatalf("PutInstances: %v", err)
	}
	if got := instances(t, s); !reflect.DeepEqual(got, want) {
		t.Errorf("Instances() = %+v, want %+v", got, want)
	}
}

func TestInstancesEmpty(t *testing.T) {
	s, _ := newStore(t)
	if got := instances(t, s); len(got) != 0 {
		t.Errorf("Instances() of a new store = %+v, want none", got)
	}
}

func TestStatusIsNeverStored(t *testing.T) {
	tests := []struct {
		name  string
		write func(*store.Store, fleet.Instance) error
	}{
		{"PutInstances", func(s *store.Store, inst fleet.Instance) error { return s.PutInstances(inst) }},
		{"UpdateInstances", func(s *store.Store, inst fleet.Instance) error { return s.UpdateInstances(inst) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			putInstances(t, s, "i-1")
			if err := tt.write(s, fleet.Instance{ID: "i-1", CreatedAt: t0, Status: fleet.StatusOnline}); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			got := instances(t, s)
			if len(got) != 1 || got[0].Status != "" {
				t.Errorf("Instances() = %+v, want i-1 with an empty Status", got)
			}
		})
	}
}

func TestUpdateInstancesDoesNotResurrect(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "i-1", "i-2")
	if err := s.DeleteInstance("i-1"); err != nil {
		t.Fatalf("DeleteInstance: %v", err)
	}

	err := s.UpdateInstances(
		fleet.Instance{ID: "i-1", Provider: "aws", CreatedAt: t0, Connected: true},
		fleet.Instance{ID: "i-2", Provider: "aws", CreatedAt: t0, Connected: true},
		fleet.Instance{ID: "i-3", Provider: "aws", CreatedAt: t0, Connected: true}, // never existed
	)
	if err != nil {
		t.Fatalf("UpdateInstances: %v", err)
	}
	want := []fleet.Instance{{ID: "i-2", Provider: "aws", CreatedAt: t0, Connected: true}}
	if got := instances(t, s); !reflect.DeepEqual(got, want) {
		t.Errorf("Instances() = %+v, want %+v", got, want)
	}
}

func TestDeleteInstance(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "i-1", "i-2")
	used1 := mint(t, s, "i-1", time.Hour, t0)
	unused1 := mint(t, s, "i-1", time.Hour, t0)
	used2 := mint(t, s, "i-2", time.Hour, t0)
	unused2 := mint(t, s, "i-2", time.Hour, t0)
	redeem(t, s, "i-1", used1, keyA, t0)
	redeem(t, s, "i-2", used2, keyB, t0)
	appendEvent(t, s, "i-1", 1)
	appendEvent(t, s, "i-2", 2)

	if err := s.DeleteInstance("i-1"); err != nil {
		t.Fatalf("DeleteInstance: %v", err)
	}

	if got, want := instanceIDs(t, s), []string{"i-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("instances = %v, want %v", got, want)
	}
	if got, want := credentials(t, s), map[string]string{keyB: "i-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Credentials() = %v, want %v", got, want)
	}
	if got := eventIDs(t, s, "i-1", 10); len(got) != 0 {
		t.Errorf("events of i-1 = %v, want none", got)
	}
	if got, want := eventIDs(t, s, "i-2", 10), []string{"evt-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("events of i-2 = %v, want %v", got, want)
	}

	// Bring an instance of the same id back: had its tokens survived, the
	// used one would still answer its key and the unused one would enroll.
	putInstances(t, s, "i-1")
	for name, token := range map[string]string{"used": used1, "unused": unused1} {
		if err := s.RedeemToken("i-1", token, keyA, t0); !errors.Is(err, store.ErrTokenRefused) {
			t.Errorf("RedeemToken(%s token of the deleted i-1) = %v, want %v", name, err, store.ErrTokenRefused)
		}
	}
	// The other instance's tokens are untouched.
	if err := s.RedeemToken("i-2", used2, keyB, t0); err != nil {
		t.Errorf("RedeemToken(used token of i-2, same key) = %v, want nil", err)
	}
	if err := s.RedeemToken("i-2", unused2, keyA, t0); err != nil {
		t.Errorf("RedeemToken(unused token of i-2) = %v, want nil", err)
	}
}

func TestMintTokenUnknownInstance(t *testing.T) {
	s, _ := newStore(t)
	token, err := s.MintToken("i-nope", time.Hour, t0)
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("MintToken(unknown instance) = %v, want %v", err, store.ErrNotFound)
	}
	if token != "" {
		t.Errorf("MintToken(unknown instance) returned token %q, want none", token)
	}
}

func TestMintTokenIsUnique(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "i-1")
	if a, b := mint(t, s, "i-1", time.Hour, t0), mint(t, s, "i-1", time.Hour, t0); a == b {
		t.Errorf("two MintToken calls returned the same token %q", a)
	}
}

func TestRedeemToken(t *testing.T) {
	const ttl = time.Hour
	expires := t0.Add(ttl)
	first := t0.Add(time.Minute) // when a "before" step redeems the token

	tests := []struct {
		name string
		// before runs once the store holds i-1 and i-2 and token, minted
		// for i-1 at t0 with ttl.
		before     func(t *testing.T, s *store.Store, token string)
		instanceID string
		token      string // empty: the minted token
		key        string
		now        time.Time
		wantErr    error
		wantCreds  map[string]string
		// wantEnrolled maps each instance that must be enrolled to its
		// EnrolledAt and LastSeen; every other instance must not be.
		wantEnrolled map[string]time.Time
	}{
		{
			name:       "good token",
			instanceID: "i-1", key: keyA, now: first,
			wantCreds:    map[string]string{keyA: "i-1"},
			wantEnrolled: map[string]time.Time{"i-1": first},
		},
		{
			name:       "last instant before expiry",
			instanceID: "i-1", key: keyA, now: expires.Add(-time.Nanosecond),
			wantCreds:    map[string]string{keyA: "i-1"},
			wantEnrolled: map[string]time.Time{"i-1": expires.Add(-time.Nanosecond)},
		},
		{
			name: "same key again",
			before: func(t *testing.T, s *store.Store, token string) {
				redeem(t, s, "i-1", token, keyA, first)
			},
			instanceID: "i-1", key: keyA, now: first.Add(time.Minute),
			wantCreds:    map[string]string{keyA: "i-1"},
			wantEnrolled: map[string]time.Time{"i-1": first}, // not enrolled a second time
		},
		{
			name: "same key again after expiry",
			before: func(t *testing.T, s *store.Store, token string) {
				redeem(t, s, "i-1", token, keyA, first)
			},
			instanceID: "i-1", key: keyA, now: expires.Add(time.Hour),
			wantCreds:    map[string]string{keyA: "i-1"},
			wantEnrolled: map[string]time.Time{"i-1": first},
		},
		{
			name: "same token, another key",
			before: func(t *testing.T, s *store.Store, token string) {
				redeem(t, s, "i-1", token, keyA, first)
			},
			instanceID: "i-1", key: keyB, now: first.Add(time.Minute),
			wantErr:      store.ErrTokenRefused,
			wantCreds:    map[string]string{keyA: "i-1"},
			wantEnrolled: map[string]time.Time{"i-1": first},
		},
		{
			name:       "expired, at the instant of expiry",
			instanceID: "i-1", key: keyA, now: expires,
			wantErr: store.ErrTokenRefused,
		},
		{
			name:       "expired long ago",
			instanceID: "i-1", key: keyA, now: expires.Add(24 * time.Hour),
			wantErr: store.ErrTokenRefused,
		},
		{
			name:       "bound to another instance",
			instanceID: "i-2", key: keyA, now: first,
			wantErr: store.ErrTokenRefused,
		},
		{
			name:       "unknown token",
			instanceID: "i-1", token: "spe_NOTAREALTOKEN", key: keyA, now: first,
			wantErr: store.ErrTokenRefused,
		},
		{
			name: "instance deleted",
			before: func(t *testing.T, s *store.Store, _ string) {
				if err := s.DeleteInstance("i-1"); err != nil {
					t.Fatalf("DeleteInstance: %v", err)
				}
			},
			instanceID: "i-1", key: keyA, now: first,
			wantErr: store.ErrTokenRefused,
		},
		{
			name: "instance deleted and created again",
			before: func(t *testing.T, s *store.Store, _ string) {
				if err := s.DeleteInstance("i-1"); err != nil {
					t.Fatalf("DeleteInstance: %v", err)
				}
				putInstances(t, s, "i-1")
			},
			instanceID: "i-1", key: keyA, now: first,
			wantErr: store.ErrTokenRefused,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t)
			putInstances(t, s, "i-1", "i-2")
			token := mint(t, s, "i-1", ttl, t0)
			if tt.before != nil {
				tt.before(t, s, token)
			}
			if tt.token != "" {
				token = tt.token
			}

			err := s.RedeemToken(tt.instanceID, token, tt.key, tt.now)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("RedeemToken = %v, want nil", err)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("RedeemToken = %v, want %v", err, tt.wantErr)
			}

			wantCreds := tt.wantCreds
			if wantCreds == nil {
				wantCreds = map[string]string{}
			}
			if got := credentials(t, s); !reflect.DeepEqual(got, wantCreds) {
				t.Errorf("Credentials() = %v, want %v", got, wantCreds)
			}
			for _, inst := range instances(t, s) {
				want := tt.wantEnrolled[inst.ID] // zero: not enrolled
				if !inst.EnrolledAt.Equal(want) || !inst.LastSeen.Equal(want) {
					t.Errorf("%s: EnrolledAt %v, LastSeen %v, want both %v", inst.ID, inst.EnrolledAt, inst.LastSeen, want)
				}
			}
		})
	}
}

func TestEnrollTokenNotInFile(t *testing.T) {
	s, path := newStore(t)
	putInstances(t, s, "i-1")
	token := mint(t, s, "i-1", time.Hour, t0)
	redeem(t, s, "i-1", token, keyA, t0) // the used record is written again
	checkSecretNotInFile(t, s, path, token)
}

func TestAPITokens(t *testing.T) {
	s, _ := newStore(t)

	if has, err := s.HasAPITokens(); err != nil || has {
		t.Fatalf("HasAPITokens() of a new store = %v, %v, want false, nil", has, err)
	}
	admin, err := s.CreateAPIToken("alice", accounts.RoleAdmin, t0)
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	operator, err := s.CreateAPIToken("bob", accounts.RoleOperator, t0.Add(time.Minute))
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	if has, err := s.HasAPITokens(); err != nil || !has {
		t.Errorf("HasAPITokens() = %v, %v, want true, nil", has, err)
	}

	tests := []struct {
		name    string
		token   string
		want    accounts.APIToken
		wantErr error
	}{
		{"admin", admin, accounts.APIToken{Name: "alice", Role: accounts.RoleAdmin, CreatedAt: t0}, nil},
		{"operator", operator, accounts.APIToken{Name: "bob", Role: accounts.RoleOperator, CreatedAt: t0.Add(time.Minute)}, nil},
		{"unknown", "spt_NOTAREALTOKEN", accounts.APIToken{}, store.ErrNotFound},
		{"empty", "", accounts.APIToken{}, store.ErrNotFound},
		{"prefix of a real token", admin[:len(admin)-1], accounts.APIToken{}, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.LookupAPIToken(tt.token)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("LookupAPIToken = %v, want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LookupAPIToken = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAPITokenNotInFile(t *testing.T) {
	s, path := newStore(t)
	token, err := s.CreateAPIToken("alice", accounts.RoleAdmin, t0)
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	checkSecretNotInFile(t, s, path, token)
}

func TestAppendEventIsIdempotent(t *testing.T) {
	s, _ := newStore(t)
	for _, seq := range []uint64{1, 2, 2, 3, 1, 3} { // redeliveries
		appendEvent(t, s, "i-1", seq)
	}
	if got, want := eventIDs(t, s, "i-1", 100), []string{"evt-1", "evt-2", "evt-3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Events = %v, want %v", got, want)
	}
}

func TestEvents(t *testing.T) {
	s, _ := newStore(t)
	// Out of order, and across byte boundaries, so that only ordering by
	// sequence number gives oldest-first.
	for _, seq := range []uint64{256, 1, 1 << 40, 2, 255} {
		appendEvent(t, s, "i-1", seq)
	}
	appendEvent(t, s, "i-2", 3)

	tests := []struct {
		name       string
		instanceID string
		limit      int
		want       []string
	}{
		{"all", "i-1", 100, []string{"evt-1", "evt-2", "evt-255", "evt-256", "evt-1099511627776"}},
		{"exactly all", "i-1", 5, []string{"evt-1", "evt-2", "evt-255", "evt-256", "evt-1099511627776"}},
		{"last three", "i-1", 3, []string{"evt-255", "evt-256", "evt-1099511627776"}},
		{"last one", "i-1", 1, []string{"evt-1099511627776"}},
		{"none asked", "i-1", 0, nil},
		{"another instance", "i-2", 100, []string{"evt-3"}},
		{"unknown instance", "i-nope", 100, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := eventIDs(t, s, tt.instanceID, tt.limit); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Events(%s, %d) = %v, want %v", tt.instanceID, tt.limit, got, tt.want)
			}
		})
	}
}

func TestEventsKeepsContent(t *testing.T) {
	s, _ := newStore(t)
	want := protocol.Event{V: protocol.Version, ID: "evt-01", InstanceID: "i-1", At: t0,
		Type: protocol.EventLinkRestored, Severity: protocol.SeverityInfo, Message: "link restored",
		Data: map[string]string{"down_for": "3m"}}
	if err := s.AppendEvent(want, 7); err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	got, err := s.InstanceEvents("i-1", 10)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if !reflect.DeepEqual(got, []protocol.Event{want}) {
		t.Errorf("Events = %+v, want %+v", got, []protocol.Event{want})
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	s, path := newStore(t)
	putInstances(t, s, "i-1", "i-2")
	used := mint(t, s, "i-1", time.Hour, t0)
	unused := mint(t, s, "i-2", time.Hour, t0)
	redeem(t, s, "i-1", used, keyA, t0.Add(time.Minute))
	apiToken, err := s.CreateAPIToken("alice", accounts.RoleAdmin, t0)
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	appendEvent(t, s, "i-1", 1)
	appendEvent(t, s, "i-1", 2)
	wantInstances := instances(t, s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openStore(t, path)
	if err := s.Ready(); err != nil {
		t.Errorf("Ready() after reopening = %v", err)
	}
	if got := instances(t, s); !reflect.DeepEqual(got, wantInstances) {
		t.Errorf("Instances() after reopening = %+v, want %+v", got, wantInstances)
	}
	if got, want := credentials(t, s), map[string]string{keyA: "i-1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Credentials() after reopening = %v, want %v", got, want)
	}
	if got, want := eventIDs(t, s, "i-1", 10), []string{"evt-1", "evt-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Events() after reopening = %v, want %v", got, want)
	}
	if got, err := s.LookupAPIToken(apiToken); err != nil || got.Name != "alice" {
		t.Errorf("LookupAPIToken after reopening = %+v, %v, want alice's token", got, err)
	}
	// Tokens keep their state: the used one still belongs to its key alone,
	// the unused one still enrolls.
	if err := s.RedeemToken("i-1", used, keyB, t0.Add(2*time.Minute)); !errors.Is(err, store.ErrTokenRefused) {
		t.Errorf("RedeemToken(used token, another key) after reopening = %v, want %v", err, store.ErrTokenRefused)
	}
	if err := s.RedeemToken("i-2", unused, keyB, t0.Add(2*time.Minute)); err != nil {
		t.Errorf("RedeemToken(unused token) after reopening = %v, want nil", err)
	}
}

// A token for one instance cannot take over the key another instance enrolled.
func TestRedeemCannotMoveAnotherInstancesKey(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "i-a", "i-b")
	redeem(t, s, "i-a", mint(t, s, "i-a", time.Hour, t0), "UKEYOFA", t0)
	tokenB := mint(t, s, "i-b", time.Hour, t0)
	if err := s.RedeemToken("i-b", tokenB, "UKEYOFA", t0); !errors.Is(err, store.ErrTokenRefused) {
		t.Fatalf("B presenting A's key: %v, want ErrTokenRefused", err)
	}
	if got := credentials(t, s); len(got) != 1 || got["UKEYOFA"] != "i-a" {
		t.Errorf("credentials = %v, want A's key still A's", got)
	}
	redeem(t, s, "i-b", tokenB, "UKEYOFB", t0) // B's token is still good for B's own key
}
