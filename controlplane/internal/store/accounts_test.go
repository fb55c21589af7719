package store_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/audit"
	"github.com/stackpro/stackpro/controlplane/internal/store"
)

// anyone lets anyone revoke a session.
func anyone(accounts.RefreshToken) error { return nil }

func createUser(t *testing.T, s *store.Store, id, email string) accounts.User {
	t.Helper()
	u := accounts.User{ID: id, Email: email, Role: accounts.RoleCustomer, CustomerID: "cus-" + id, CreatedAt: t0}
	if err := s.CreateUser(u, "hash-of-"+id, accounts.Customer{ID: u.CustomerID, Plan: "starter", Status: "trial", CreatedAt: t0}); err != nil {
		t.Fatalf("CreateUser(%s): %v", id, err)
	}
	return u
}

func TestCreateUser(t *testing.T) {
	s, _ := newStore(t)
	u := createUser(t, s, "usr-1", "ada@example.com")
	err := s.CreateUser(accounts.User{ID: "usr-2", Email: "ada@example.com"}, "h", accounts.Customer{ID: "cus-2"})
	if !errors.Is(err, accounts.ErrEmailTaken) {
		t.Fatalf("CreateUser(taken address) = %v, want ErrEmailTaken", err)
	}
	if _, err := s.User("usr-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("User(usr-2) = %v, want ErrNotFound: a refused signup stores nothing", err)
	}
	if _, err := s.Customer("cus-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Customer(cus-2) = %v, want ErrNotFound", err)
	}
	if got, err := s.UserByEmail("ada@example.com"); err != nil || got != u {
		t.Errorf("UserByEmail = %+v, %v, want %+v", got, err, u)
	}
	if got, err := s.PasswordHash("usr-1"); err != nil || got != "hash-of-usr-1" {
		t.Errorf("PasswordHash = %q, %v", got, err)
	}
	if c, err := s.Customer(u.CustomerID); err != nil || c.Plan != "starter" {
		t.Errorf("Customer = %+v, %v", c, err)
	}
	if _, err := s.UserByEmail("nobody@example.com"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UserByEmail(unknown) = %v, want ErrNotFound", err)
	}
}

func TestUpdateUserKeepsIdentity(t *testing.T) {
	s, _ := newStore(t)
	u := createUser(t, s, "usr-1", "ada@example.com")
	_, err := s.UpdateUser(u.ID, func(u *accounts.User) error {
		u.FirstName, u.Email = "Ada", "eve@example.com"
		return nil
	})
	if err == nil {
		t.Fatal("UpdateUser changed the address")
	}
	if got, _ := s.User(u.ID); got != u {
		t.Errorf("User after a refused update = %+v, want %+v", got, u)
	}
	got, err := s.UpdateUser(u.ID, func(u *accounts.User) error { u.FirstName = "Ada"; return nil })
	if err != nil || got.FirstName != "Ada" {
		t.Errorf("UpdateUser = %+v, %v", got, err)
	}
	if _, err := s.UpdateUser("usr-nobody", func(*accounts.User) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateUser(unknown) = %v, want ErrNotFound", err)
	}
}

func TestOneTimeTokens(t *testing.T) {
	s, path := newStore(t)
	put := func(token, purpose, user string, expires time.Time) {
		t.Helper()
		if err := s.PutOneTimeToken(token, accounts.OneTimeToken{Purpose: purpose, UserID: user, ExpiresAt: expires}); err != nil {
			t.Fatalf("PutOneTimeToken: %v", err)
		}
	}
	put("spv_first", "verify", "usr-1", t0.Add(time.Hour))
	put("spv_second", "verify", "usr-1", t0.Add(time.Hour)) // replaces the first
	put("spw_Zq8x3kLmPw", "reset", "usr-1", t0.Add(time.Hour))
	put("spv_other", "verify", "usr-2", t0.Add(time.Hour))

	tests := []struct {
		name, token, purpose string
		now                  time.Time
		want                 error
	}{
		{"replaced", "spv_first", "verify", t0, store.ErrNotFound},
		{"wrong purpose", "spv_second", "reset", t0, store.ErrNotFound},
		{"expired", "spv_second", "verify", t0.Add(time.Hour), accounts.ErrExpired},
		{"unknown", "spv_unknown", "verify", t0, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.UseOneTimeToken(tt.token, tt.purpose, tt.now); !errors.Is(err, tt.want) {
				t.Errorf("UseOneTimeToken = %v, want %v", err, tt.want)
			}
		})
	}
	for _, tt := range []struct{ token, purpose string }{{"spv_second", "verify"}, {"spw_Zq8x3kLmPw", "reset"}, {"spv_other", "verify"}} {
		if _, err := s.OneTimeToken(tt.token, tt.purpose, t0); err != nil {
			t.Errorf("OneTimeToken(%s) = %v: a refused or peeked token stays good", tt.token, err)
		}
	}
	got, err := s.UseOneTimeToken("spv_second", "verify", t0)
	if err != nil || got.UserID != "usr-1" {
		t.Fatalf("UseOneTimeToken = %+v, %v", got, err)
	}
	if _, err := s.UseOneTimeToken("spv_second", "verify", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UseOneTimeToken again = %v, want ErrNotFound", err)
	}
	checkSecretNotInFile(t, s, path, "spw_Zq8x3kLmPw")
}

func TestRefreshTokenFamilies(t *testing.T) {
	s, path := newStore(t)
	for token, rt := range map[string]accounts.RefreshToken{
		"spr_a1": {SessionID: "ses-a", UserID: "usr-1", ExpiresAt: t0.Add(time.Hour)},
		"spr_b1": {SessionID: "ses-b", UserID: "usr-1", ExpiresAt: t0.Add(time.Hour)},
		"spr_c1": {SessionID: "ses-c", UserID: "usr-2", ExpiresAt: t0.Add(time.Hour)},
	} {
		if err := s.PutRefreshToken(token, rt); err != nil {
			t.Fatal(err)
		}
	}
	next, err := s.RotateRefreshToken("ses-a", "spr_a1", "spr_a2", t0.Add(time.Minute), time.Hour)
	want := accounts.RefreshToken{SessionID: "ses-a", UserID: "usr-1", ExpiresAt: t0.Add(time.Minute + time.Hour)}
	if err != nil || next != want {
		t.Fatalf("RotateRefreshToken = %+v, %v, want %+v", next, err, want)
	}
	for _, tt := range []struct {
		name, session, token string
		want                 error
	}{
		{"expired", "ses-b", "spr_b1", accounts.ErrExpired},
		{"unknown session", "ses-x", "spr_b1", store.ErrNotFound},
		{"token of another session", "ses-b", "spr_c1", store.ErrNotFound},
	} {
		if _, err := s.RotateRefreshToken(tt.session, tt.token, "spr_x", t0.Add(time.Hour), time.Hour); !errors.Is(err, tt.want) {
			t.Errorf("RotateRefreshToken(%s) = %v, want %v", tt.name, err, tt.want)
		}
	}
	reused, err := s.RotateRefreshToken("ses-a", "spr_a1", "spr_a3", t0.Add(2*time.Minute), time.Hour)
	if !errors.Is(err, accounts.ErrTokenReused) || reused.UserID != "usr-1" || reused.SessionID != "ses-a" {
		t.Fatalf("RotateRefreshToken(used) = %+v, %v, want ErrTokenReused with the token's record", reused, err)
	}
	for _, token := range []string{"spr_a1", "spr_a2", "spr_a3"} {
		if _, err := s.RotateRefreshToken("ses-a", token, "spr_x", t0, time.Hour); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("RotateRefreshToken(%s of the revoked family) = %v, want ErrNotFound", token, err)
		}
	}

	if err := s.SetPassword("usr-1", "new hash"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetPassword(no such user) = %v, want ErrNotFound", err)
	}
	createUser(t, s, "usr-1", "ada@example.com")
	if err := s.SetPassword("usr-1", "new hash"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeRefreshFamily("ses-b", "spr_b1", anyone); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeRefreshFamily(usr-1's session after SetPassword) = %v, want ErrNotFound", err)
	}
	if _, err := s.RevokeRefreshFamily("ses-c", "spr_b1", anyone); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeRefreshFamily(session id without its token) = %v, want ErrNotFound", err)
	}
	if err := s.PutRefreshToken("spr_Zq8x3kLmPw", accounts.RefreshToken{SessionID: "ses-d", UserID: "usr-2"}); err != nil {
		t.Fatal(err)
	}
	notYours := errors.New("not yours")
	rt, err := s.RevokeRefreshFamily("ses-c", "spr_c1", func(accounts.RefreshToken) error { return notYours })
	if !errors.Is(err, notYours) || rt.UserID != "usr-2" {
		t.Errorf("RevokeRefreshFamily(refused) = %+v, %v, want the refusal and the token's record", rt, err)
	}
	if rt, err := s.RevokeRefreshFamily("ses-c", "spr_c1", anyone); err != nil || rt.UserID != "usr-2" {
		t.Errorf("RevokeRefreshFamily(usr-2's session) = %+v, %v, want it untouched until now", rt, err)
	}
	if _, err := s.RotateRefreshToken("ses-c", "spr_c1", "spr_c2", t0, time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RotateRefreshToken(revoked) = %v, want ErrNotFound", err)
	}
	checkSecretNotInFile(t, s, path, "spr_Zq8x3kLmPw")
}

// Rotation drops the family's expired tokens: a long session holds the
// tokens of one lifetime, not of its whole life.
func TestRotationPrunesExpiredTokens(t *testing.T) {
	s, _ := newStore(t)
	if err := s.PutRefreshToken("spr_0", accounts.RefreshToken{SessionID: "ses-a", UserID: "usr-1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	now := t0
	for i := range 10 {
		now = now.Add(20 * time.Minute)
		if _, err := s.RotateRefreshToken("ses-a", fmt.Sprint("spr_", i), fmt.Sprint("spr_", i+1), now, time.Hour); err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
	}
	// spr_0 expired an hour after t0 and is gone; spr_8, issued 40 min
	// ago, is still known as used.
	if _, err := s.RotateRefreshToken("ses-a", "spr_0", "spr_x", now, time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RotateRefreshToken(long expired) = %v, want ErrNotFound", err)
	}
	if _, err := s.RotateRefreshToken("ses-a", "spr_8", "spr_x", now, time.Hour); !errors.Is(err, accounts.ErrTokenReused) {
		t.Errorf("RotateRefreshToken(recently used) = %v, want ErrTokenReused", err)
	}
}

func TestPruneSessions(t *testing.T) {
	s, _ := newStore(t)
	for token, rt := range map[string]accounts.RefreshToken{
		"spr_a1": {SessionID: "ses-a", UserID: "usr-1", ExpiresAt: t0},
		"spr_a2": {SessionID: "ses-a", UserID: "usr-1", ExpiresAt: t0.Add(time.Hour)},
		"spr_b1": {SessionID: "ses-b", UserID: "usr-1", ExpiresAt: t0},
	} {
		if err := s.PutRefreshToken(token, rt); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.PruneSessions(t0); err != nil || n != 1 {
		t.Fatalf("PruneSessions = %d, %v, want 1 (ses-b)", n, err)
	}
	if _, err := s.RevokeRefreshFamily("ses-b", "spr_b1", anyone); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ses-b after pruning: %v, want ErrNotFound", err)
	}
	if _, err := s.RevokeRefreshFamily("ses-a", "spr_a1", anyone); err != nil {
		t.Errorf("ses-a, which a token still renews, after pruning: %v", err)
	}
}

func TestSigningKeys(t *testing.T) {
	s, _ := newStore(t)
	k := func(id string, age time.Duration) accounts.SigningKey {
		return accounts.SigningKey{ID: id, PrivateKey: []byte("key " + id), CreatedAt: t0.Add(-age)}
	}
	for _, set := range [][]accounts.SigningKey{
		{k("k1", 2*time.Hour), k("k2", time.Hour)},
		{k("k3", 0), k("k2", time.Hour)},
	} {
		if err := s.ReplaceSigningKeys(set); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.SigningKeys()
	if want := []accounts.SigningKey{k("k2", time.Hour), k("k3", 0)}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("SigningKeys = %+v, %v, want %+v, oldest first", got, err, want)
	}
}

func TestAuditLogInTimeOrder(t *testing.T) {
	s, _ := newStore(t)
	for _, d := range []time.Duration{2, 0, 1, 1} {
		if err := s.AppendAudit(audit.Record{Time: t0.Add(d * time.Second), Event: "login", Detail: d.String()}); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.AuditLog(3)
	if err != nil {
		t.Fatal(err)
	}
	var got []time.Time
	for _, r := range recs {
		got = append(got, r.Time)
	}
	if want := []time.Time{t0.Add(time.Second), t0.Add(time.Second), t0.Add(2 * time.Second)}; !reflect.DeepEqual(got, want) {
		t.Errorf("AuditLog(3) times = %v, want %v", got, want)
	}
}

func TestListAndRevokeAPITokens(t *testing.T) {
	s, _ := newStore(t)
	alice, err := s.CreateAPIToken("alice", accounts.RoleAdmin, t0)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := s.CreateAPIToken("bob", accounts.RoleOperator, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.ListAPITokens()
	want := []accounts.APITokenInfo{
		{ID: accounts.APITokenID(alice), APIToken: accounts.APIToken{Name: "alice", Role: accounts.RoleAdmin, CreatedAt: t0}},
		{ID: accounts.APITokenID(bob), APIToken: accounts.APIToken{Name: "bob", Role: accounts.RoleOperator, CreatedAt: t0.Add(time.Minute)}},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ListAPITokens = %+v, %v, want %+v", got, err, want)
	}
	for _, id := range []string{"", want[0].ID[:4], "0000000000000000", want[0].ID + "0"} {
		if err := s.RevokeAPIToken(id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("RevokeAPIToken(%q) = %v, want ErrNotFound", id, err)
		}
	}
	if err := s.RevokeAPIToken(want[0].ID); err != nil {
		t.Fatalf("RevokeAPIToken: %v", err)
	}
	if _, err := s.LookupAPIToken(alice); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LookupAPIToken(revoked) = %v, want ErrNotFound", err)
	}
	if _, err := s.LookupAPIToken(bob); err != nil {
		t.Errorf("LookupAPIToken(other) = %v", err)
	}
}
