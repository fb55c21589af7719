package accounts_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stackpro/stackpro/controlplane/accounts"
)

func TestHashVerify(t *testing.T) {
	hash := testHasher.Hash("correct horse battery")
	if !strings.HasPrefix(hash, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Errorf("Hash = %q, want a PHC argon2id string with the hasher's parameters", hash)
	}
	if again := testHasher.Hash("correct horse battery"); again == hash {
		t.Error("two hashes of one password are equal: no salt")
	}
	tests := []struct {
		password string
		want     bool
	}{
		{"correct horse battery", true},
		{"Correct horse battery", false},
		{"correct horse battery ", false},
		{"", false},
	}
	for _, tt := range tests {
		if got, err := accounts.VerifyPassword(hash, tt.password); err != nil || got != tt.want {
			t.Errorf("VerifyPassword(%q) = %v, %v, want %v", tt.password, got, err, tt.want)
		}
	}
}

// Verify reads the parameters from the hash, whatever the hasher now.
func TestVerifyOtherParameters(t *testing.T) {
	for _, h := range []accounts.Hasher{{Memory: 32, Time: 3, Threads: 2}, {Memory: 1024, Time: 1, Threads: 4}} {
		if ok, err := accounts.VerifyPassword(h.Hash("pass phrase"), "pass phrase"); err != nil || !ok {
			t.Errorf("VerifyPassword(hash by %+v) = %v, %v, want true", h, ok, err)
		}
	}
}

func TestDummyHashNeverMatches(t *testing.T) {
	dummy := testHasher.DummyHash()
	for _, p := range []string{"", "password", dummy} {
		if ok, err := accounts.VerifyPassword(dummy, p); err != nil || ok {
			t.Errorf("VerifyPassword(dummy, %q) = %v, %v, want false, nil", p, ok, err)
		}
	}
}

func TestVerifyMalformed(t *testing.T) {
	good := testHasher.Hash("pass phrase")
	parts := strings.Split(good, "$")
	with := func(i int, v string) string {
		p := append([]string(nil), parts...)
		p[i] = v
		return strings.Join(p, "$")
	}
	tests := map[string]string{
		"empty":             "",
		"bcrypt":            "$2a$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
		"argon2i":           with(1, "argon2i"),
		"version 16":        with(2, "v=16"),
		"parameters order":  with(3, "t=1,m=64,p=1"),
		"trailing junk":     with(3, "m=64,t=1,p=1,x=2"),
		"zero passes":       with(3, "m=64,t=0,p=1"),
		"zero threads":      with(3, "m=64,t=1,p=0"),
		"too little memory": with(3, "m=4,t=1,p=1"),
		"too much memory":   with(3, "m=4194304,t=1,p=1"),
		"salt not base64":   with(4, "!!!"),
		"short salt":        with(4, "c2FsdA"),
		"hash not base64":   with(5, "$$$"),
		"short hash":        with(5, "c2hvcnQ"),
		"extra field":       good + "$x",
	}
	for name, hash := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := accounts.VerifyPassword(hash, "pass phrase"); !errors.Is(err, accounts.ErrMalformedHash) {
				t.Errorf("VerifyPassword(%q) = %v, want ErrMalformedHash", hash, err)
			}
		})
	}
}

func TestCheckPassword(t *testing.T) {
	tests := []struct {
		password, email string
		ok              bool
	}{
		{"correct horse battery", "ada@example.com", true},
		{"Tr0ub4dor&3x", "ada@example.com", true},
		{"ünïcödé-pässwörd", "ada@example.com", true},
		{strings.Repeat("ab1!", 32), "ada@example.com", true}, // 128 characters
		{"short", "ada@example.com", false},
		{"nine char", "ada@example.com", false},
		{"ççççç", "ada@example.com", false}, // 10 bytes, 5 characters
		{strings.Repeat("ab1!", 32) + "x", "ada@example.com", false},
		{"aaaaaaaaaaaa", "ada@example.com", false},
		{"abababababab", "ada@example.com", false},
		{"1234567890", "ada@example.com", false},
		{"QwertyUiop", "ada@example.com", false},
		{"Password123!", "ada@example.com", false},
		{"password1234", "ada@example.com", false},
		{"lovelace-rules-2026", "Lovelace@example.com", false},
		{"i am ada, hello", "ada@example.com", false},
		{"i am jo, hello!", "jo@example.com", true}, // a 2-letter local part is not checked
		{"my stackpro pass", "ada@example.com", false},
		{"bad\xffutf8 password", "ada@example.com", false},
	}
	for _, tt := range tests {
		t.Run(tt.password, func(t *testing.T) {
			err := accounts.CheckPassword(tt.password, tt.email)
			if tt.ok && err != nil {
				t.Errorf("CheckPassword(%q, %q) = %v, want nil", tt.password, tt.email, err)
			}
			if !tt.ok && !errors.Is(err, accounts.ErrWeakPassword) {
				t.Errorf("CheckPassword(%q, %q) = %v, want ErrWeakPassword", tt.password, tt.email, err)
			}
		})
	}
}
