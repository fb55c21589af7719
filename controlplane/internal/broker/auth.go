package broker

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/stackpro/stackpro/shared/protocol"
)

// keyPair is an NKey the control plane made for one of its own connections.
type keyPair struct {
	public string
	kp     nkeys.KeyPair
}

func newKeyPair() (*keyPair, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("broker: creating key: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("broker: creating key: %w", err)
	}
	return &keyPair{public: pub, kp: kp}, nil
}

func (k *keyPair) sign(nonce []byte) ([]byte, error) { return k.kp.Sign(nonce) }

// authenticator is the server's CustomClientAuthentication: it checks the
// NKey signature of every connection and hands it its account and
// permissions.
type authenticator struct {
	log              *slog.Logger
	server           *server.Server
	accounts         *accounts
	internal, system *keyPair
	// open is closed by Broker.Open: agents and the enroll user wait for
	// it, so that none connects before the broker watches connections come
	// and go, nor before the control plane takes what they send. Once
	// closing is set (Broker.CloseAgents) they are refused.
	open     chan struct{}
	openOnce sync.Once
	closing  atomic.Bool

	mu     sync.RWMutex
	agents map[string]string // public key → instance id
}

var _ server.Authentication = (*authenticator)(nil)

func newAuthenticator(log *slog.Logger, creds map[string]string) (*authenticator, error) {
	internal, err := newKeyPair()
	if err != nil {
		return nil, err
	}
	system, err := newKeyPair()
	if err != nil {
		return nil, err
	}
	agents := make(map[string]string, len(creds))
	for k, v := range creds {
		agents[k] = v
	}
	return &authenticator{log: log, internal: internal, system: system, agents: agents, open: make(chan struct{})}, nil
}

func (a *authenticator) instanceOf(publicKey string) (string, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	id, ok := a.agents[publicKey]
	return id, ok
}

func (a *authenticator) authorize(publicKey, instanceID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.agents[publicKey] = instanceID
}

// revoke forgets instance id's keys.
func (a *authenticator) revoke(instanceID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, id := range a.agents {
		if id == instanceID {
			delete(a.agents, k)
		}
	}
}

// Check lets a connection in, with its permissions, or refuses it.
func (a *authenticator) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	opts := c.GetOpts()
	if opts.Nkey == "" {
		if opts.Username == protocol.EnrollUser && a.wait(c) {
			c.RegisterUser(&server.User{Username: protocol.EnrollUser, Account: a.accounts.enroll, Permissions: enrollPermissions()})
			return true
		}
		a.log.Warn("connection refused: no credentials", "remote", c.RemoteAddress())
		return false
	}
	if !verify(opts.Nkey, opts.Sig, c.GetNonce()) {
		a.log.Warn("connection refused: bad signature", "remote", c.RemoteAddress(), "key", opts.Nkey)
		return false
	}
	nc, ok := c.(interface{ RegisterNkeyUser(*server.NkeyUser) error })
	if !ok {
		return false
	}
	user := &server.NkeyUser{Nkey: opts.Nkey}
	switch opts.Nkey {
	case a.internal.public:
		// The control plane: every subject of its own account.
		user.Account = a.accounts.cp
	case a.system.public:
		user.Account = a.server.SystemAccount()
	default:
		if user.Account, user.Permissions = a.agent(c, opts.Nkey); user.Account == nil {
			return false
		}
	}
	return nc.RegisterNkeyUser(user) == nil
}

// openWait is how long an agent's or the enroll user's connection waits
// for the broker to open before it is refused (and tries again).
const openWait = 10 * time.Second

// wait waits for the broker to open and reports whether agents may come in.
func (a *authenticator) wait(c server.ClientAuthentication) bool {
	select {
	case <-a.open:
	case <-time.After(openWait):
		a.log.Warn("connection refused: the broker is not open yet", "remote", c.RemoteAddress())
		return false
	}
	if a.closing.Load() {
		a.log.Info("connection refused: the control plane is stopping", "remote", c.RemoteAddress())
		return false
	}
	return true
}

// agent returns the account and permissions of the agent whose key is
// publicKey, or nil when it may not connect.
func (a *authenticator) agent(c server.ClientAuthentication, publicKey string) (*server.Account, *server.Permissions) {
	id, known := a.instanceOf(publicKey)
	if !known {
		a.log.Warn("connection refused: unknown key", "remote", c.RemoteAddress(), "key", publicKey)
		return nil, nil
	}
	if !a.wait(c) {
		return nil, nil
	}
	acc, err := a.accounts.agent(id)
	if err != nil {
		a.log.Error("connection refused", "remote", c.RemoteAddress(), "instance", id, "err", err)
		return nil, nil
	}
	return acc, agentPermissions(id)
}

// verify checks sig (base64, as clients send it) over nonce with publicKey.
func verify(publicKey, sig string, nonce []byte) bool {
	if !nkeys.IsValidPublicUserKey(publicKey) || len(nonce) == 0 {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		if raw, err = base64.StdEncoding.DecodeString(sig); err != nil {
			return false
		}
	}
	pub, err := nkeys.FromPublicKey(publicKey)
	return err == nil && pub.Verify(nonce, raw) == nil
}

// agentPermissions: an agent publishes only under its own subjects (its
// answers to commands included) and asks for its own target; it
// subscribes only to its own commands, its own target and its own inbox.
// Its account already holds nothing else; the list is a second wall.
func agentPermissions(instanceID string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			protocol.AgentSubjects(instanceID),
			protocol.TargetGetSubject(instanceID),
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			protocol.CommandSubject(instanceID),
			protocol.TargetSubject(instanceID),
			protocol.InboxPrefix(instanceID) + ".>",
		}},
	}
}

// enrollPermissions: ask to enroll, read the answer, nothing else.
func enrollPermissions() *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{protocol.EnrollSubject}},
		Subscribe: &server.SubjectPermission{Allow: []string{protocol.EnrollInboxPrefix + ".>"}},
	}
}
