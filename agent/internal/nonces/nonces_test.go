package nonces

import (
	"encoding/json"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claim(t *testing.T, s *Store, nonce string, expires time.Time) bool {
	t.Helper()
	fresh, err := s.Claim(nonce, expires)
	if err != nil {
		t.Fatalf("Claim(%q): %v", nonce, err)
	}
	return fresh
}

func result(t *testing.T, s *Store, nonce string) protocol.ResultReply {
	t.Helper()
	res, err := s.Result(nonce)
	if err != nil {
		t.Fatalf("Result(%q): %v", nonce, err)
	}
	return res
}

func TestReplayRefusedAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.db")
	expires := time.Now().Add(time.Minute)
	s := open(t, path)
	if !claim(t, s, "n1", expires) {
		t.Fatal("first Claim of n1 = false, want fresh")
	}
	if claim(t, s, "n1", expires) {
		t.Fatal("second Claim of n1 = true, want a replay")
	}
	reply := protocol.CommandReply{V: protocol.Version, ID: "c1", Nonce: "n1", OK: true, Result: json.RawMessage(`{"pong":true}`)}
	if err := s.Finish("n1", protocol.CommandPing, reply); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	defer s.Close()
	if claim(t, s, "n1", expires) {
		t.Error("Claim of n1 after reopening = true, want a replay")
	}
	res := result(t, s, "n1")
	if !res.Known || res.Reply == nil || res.Reply.ID != "c1" || !res.Reply.OK || string(res.Reply.Result) != `{"pong":true}` {
		t.Errorf("Result(n1) = %+v, want the finished reply", res)
	}
	if res := result(t, s, "never"); res.Known || res.Reply != nil {
		t.Errorf("Result(never) = %+v, want unknown", res)
	}
	if !claim(t, s, "n2", expires) {
		t.Error("Claim of a new nonce = false, want fresh")
	}
}

func TestRunningThenInterrupted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.db")
	s := open(t, path)
	claim(t, s, "n1", time.Now().Add(time.Minute))
	if res := result(t, s, "n1"); !res.Known || res.Reply != nil {
		t.Errorf("Result of a running command = %+v, want known without a reply", res)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	defer s.Close()
	res := result(t, s, "n1")
	if !res.Known || res.Reply == nil || res.Reply.OK || res.Reply.Error != Interrupted || res.Reply.Nonce != "n1" {
		t.Errorf("Result after a restart = %+v, want the outcome %q", res, Interrupted)
	}
}

func TestFinishBoundsTheResult(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "nonces.db"))
	defer s.Close()
	claim(t, s, "big", time.Now().Add(time.Minute))
	huge, _ := json.Marshal(map[string]string{"logs": strings.Repeat("x", MaxResultBytes)})
	if err := s.Finish("big", protocol.CommandStackLogs, protocol.CommandReply{Nonce: "big", OK: true, Result: huge}); err != nil {
		t.Fatal(err)
	}
	res := result(t, s, "big")
	var got struct {
		Truncated bool `json:"truncated"`
		Bytes     int  `json:"bytes"`
	}
	if err := json.Unmarshal(res.Reply.Result, &got); err != nil || !got.Truncated || got.Bytes != len(huge) {
		t.Errorf("stored result %s (%v), want truncated with bytes %d", res.Reply.Result, err, len(huge))
	}
	if err := s.Finish("never-claimed", protocol.CommandPing, protocol.CommandReply{}); err == nil {
		t.Error("Finish of a nonce never claimed = nil, want an error")
	}
	if _, err := s.Claim("", time.Now()); err == nil {
		t.Error("Claim of an empty nonce = nil, want an error")
	}
}

func TestPrune(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "nonces.db"))
	defer s.Close()
	now := time.Date(2026, 11, 24, 15, 0, 0, 0, time.UTC)
	claim(t, s, "old", now.Add(-protocol.ResultRetention-time.Minute))
	claim(t, s, "kept", now.Add(-protocol.ResultRetention+time.Minute))
	claim(t, s, "fresh", now.Add(time.Minute))
	n, err := s.Prune(now)
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 forgotten", n, err)
	}
	for nonce, known := range map[string]bool{"old": false, "kept": true, "fresh": true} {
		if res := result(t, s, nonce); res.Known != known {
			t.Errorf("after Prune, Result(%q).Known = %v, want %v", nonce, res.Known, known)
		}
	}
	if !claim(t, s, "old", now.Add(time.Minute)) {
		t.Error("a pruned nonce is still claimed") // long past its expiry, Open refuses it anyway
	}
}

// TestCounts: each outcome recorded counts for its command, failures
// too; a command still running, or interrupted, does not; the counts
// outlive a reopening and the pruning of the nonces they counted.
func TestCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.db")
	s := open(t, path)
	now := time.Date(2026, 11, 24, 15, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		nonce, name string
		ok          bool
	}{{"n1", protocol.CommandPing, true}, {"n2", protocol.CommandStackRestart, true}, {"n3", protocol.CommandStackRestart, false}} {
		claim(t, s, c.nonce, now)
		if err := s.Finish(c.nonce, c.name, protocol.CommandReply{Nonce: c.nonce, OK: c.ok}); err != nil {
			t.Fatal(err)
		}
	}
	claim(t, s, "running", now)
	if err := s.Finish("never-claimed", protocol.CommandPing, protocol.CommandReply{}); err == nil {
		t.Fatal("Finish of a nonce never claimed = nil, want an error")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	defer s.Close()
	if n, err := s.Prune(now.Add(protocol.ResultRetention + time.Minute)); err != nil || n != 4 {
		t.Fatalf("Prune = %d, %v; want the 4 nonces forgotten", n, err)
	}
	want := map[string]uint64{protocol.CommandPing: 1, protocol.CommandStackRestart: 2}
	if got, err := s.Counts(); err != nil || !maps.Equal(got, want) {
		t.Errorf("Counts() = %v, %v; want %v", got, err, want)
	}
}

func TestOpenFailsFastOnALockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.db")
	s := open(t, path)
	defer s.Close()
	if other, err := Open(path); err == nil {
		other.Close()
		t.Fatal("a second Open of a held store succeeded")
	}
}
