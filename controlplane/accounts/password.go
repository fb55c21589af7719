package accounts

import (
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"

	"github.com/stackpro/stackpro/controlplane/fault"
)

// Hasher hashes passwords with argon2id (RFC 9106). Verifying reads the
// parameters from the hash, so they can change without breaking old hashes.
type Hasher struct {
	Memory  uint32 // KiB
	Time    uint32 // passes over the memory
	Threads uint8
}

// DefaultHasher takes about 64 MiB and a few tens of milliseconds a hash.
var DefaultHasher = Hasher{Memory: 64 * 1024, Time: 2, Threads: 1}

const (
	saltLen = 16
	keyLen  = 32
	// maxMemory bounds what a stored hash can make Verify allocate (1 GiB).
	maxMemory = 1 << 20
)

// ErrMalformedHash wraps every reason a stored hash cannot be read.
var ErrMalformedHash = errors.New("malformed password hash")

var b64 = base64.RawStdEncoding // PHC strings use unpadded standard base64

// Hash returns password's hash in the PHC string format:
// $argon2id$v=19$m=65536,t=2,p=1$<salt>$<hash>.
func (h Hasher) Hash(password string) string {
	salt := make([]byte, saltLen)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, h.Time, h.Memory, h.Threads, keyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, h.Memory, h.Time, h.Threads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// DummyHash returns the hash of a random password, made with h. Verifying
// against it costs what verifying against a user's hash costs and never
// succeeds: checking a login for an unknown address against it makes the
// answer come as late as for a known one.
func (h Hasher) DummyHash() string { return h.Hash(rand.Text()) }

// VerifyPassword reports whether password is the one hashed in encoded,
// comparing in constant time.
func VerifyPassword(encoded, password string) (bool, error) {
	h, salt, key, err := parseHash(encoded)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(password), salt, h.Time, h.Memory, h.Threads, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1, nil
}

func parseHash(encoded string) (h Hasher, salt, key []byte, err error) {
	bad := func(format string, args ...any) (Hasher, []byte, []byte, error) {
		return Hasher{}, nil, nil, fmt.Errorf("%w: %s", ErrMalformedHash, fmt.Sprintf(format, args...))
	}
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" {
		return bad("want $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>")
	}
	if parts[1] != "argon2id" {
		return bad("algorithm %q, want argon2id", parts[1])
	}
	if want := fmt.Sprintf("v=%d", argon2.Version); parts[2] != want {
		return bad("version %q, want %s", parts[2], want)
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &h.Memory, &h.Time, &h.Threads); err != nil ||
		fmt.Sprintf("m=%d,t=%d,p=%d", h.Memory, h.Time, h.Threads) != parts[3] {
		return bad("parameters %q, want m=<KiB>,t=<passes>,p=<threads>", parts[3])
	}
	if h.Time < 1 || h.Threads < 1 || h.Memory < 8*uint32(h.Threads) || h.Memory > maxMemory {
		return bad("parameters %q out of range", parts[3])
	}
	if salt, err = b64.DecodeString(parts[4]); err != nil || len(salt) < 8 {
		return bad("salt is not 8 or more bytes of base64")
	}
	if key, err = b64.DecodeString(parts[5]); err != nil || len(key) < 16 {
		return bad("hash is not 16 or more bytes of base64")
	}
	return h, salt, key, nil
}

// Password length bounds, in characters.
const (
	MinPasswordLen = 10
	MaxPasswordLen = 128
)

// ErrWeakPassword wraps every reason CheckPassword refuses a password. Its
// messages are safe to show the user.
var ErrWeakPassword = fault.New(fault.Invalid, "weak password")

//go:embed common_passwords.txt
var commonPasswordsText string

// commonPasswords holds the list's passwords in lower case. Lines that
// start with # are comments.
var commonPasswords = func() map[string]bool {
	m := map[string]bool{}
	for line := range strings.Lines(commonPasswordsText) {
		if p := strings.ToLower(strings.TrimSpace(line)); p != "" && !strings.HasPrefix(p, "#") {
			m[p] = true
		}
	}
	return m
}()

// CheckPassword applies the password policy of NIST SP 800-63B: 10 to 128
// characters, not a common or breached password, not a few characters
// repeated, and not built from the user's address or the product's name.
func CheckPassword(password, email string) error {
	lower := strings.ToLower(password)
	local, _, _ := strings.Cut(normalizeEmail(email), "@")
	var reason string
	switch n := utf8.RuneCountInString(password); {
	case !utf8.ValidString(password):
		reason = "is not valid UTF-8"
	case n < MinPasswordLen:
		reason = fmt.Sprintf("must have at least %d characters", MinPasswordLen)
	case n > MaxPasswordLen:
		reason = fmt.Sprintf("must have at most %d characters", MaxPasswordLen)
	case distinctRunes(lower) < 4:
		reason = "repeats too few characters"
	case commonPasswords[lower]:
		reason = "is too common"
	case utf8.RuneCountInString(local) >= 3 && strings.Contains(lower, local):
		reason = "must not contain your email address"
	case strings.Contains(lower, "stackpro"):
		reason = "must not contain the product's name"
	default:
		return nil
	}
	return ErrWeakPassword.With(fmt.Errorf("the password %s", reason))
}

func distinctRunes(s string) int {
	seen := map[rune]bool{}
	for _, r := range s {
		seen[r] = true
	}
	return len(seen)
}
