package broker

import (
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/stackpro/stackpro/shared/protocol"
)

// enrollAccount is the account of the enroll user.
const enrollAccount = "ENROLL"

// mappedReplyPrefix begins every reply subject the server makes up for a
// request that crossed into another account through a service import; an
// answer published there goes back to the requester and nowhere else.
const mappedReplyPrefix = "_R_."

// accounts is the broker's account layout (see the package comment): the
// control plane's global account, the enroll account, and one account per
// instance, made the first time its agent connects.
type accounts struct {
	ns     *server.Server
	cp     *server.Account
	enroll *server.Account

	mu     sync.Mutex
	agents map[string]*server.Account // instance id → its account
}

// newAccounts makes the control plane's exports and the enroll account.
// The exports are open to any account, but only the broker adds imports,
// so who reaches what is decided by agentAccount alone.
func newAccounts(ns *server.Server) (*accounts, error) {
	cp := ns.GlobalAccount()
	enroll, err := ns.RegisterAccount(enrollAccount)
	if err != nil {
		return nil, fmt.Errorf("broker: account %s: %w", enrollAccount, err)
	}
	err = errors.Join(
		cp.AddServiceExport(protocol.AgentSubjects("*"), nil),
		cp.AddServiceExport(protocol.TargetGetSubject("*"), nil),
		cp.AddStreamExport(protocol.TargetSubject("*"), nil),
		cp.AddStreamExport(protocol.CommandSubject("*"), nil),
		cp.AddServiceExport(protocol.EnrollSubject, []*server.Account{enroll}),
		enroll.AddServiceImport(cp, protocol.EnrollSubject, ""),
	)
	if err != nil {
		return nil, fmt.Errorf("broker: accounts: %w", err)
	}
	return &accounts{ns: ns, cp: cp, enroll: enroll, agents: map[string]*server.Account{}}, nil
}

// agent returns instance id's account, making it on first use. It holds
// that agent alone, and reaches the control plane's account through four
// imports of that instance's subjects only, all in its own account (so
// making one costs the same with 10 instances as with 50,000):
//
//   - its own subjects, for heartbeats, metrics, events (whose JetStream
//     acknowledgements come back to it) and its answers to commands (see
//     protocol.ReplySubject);
//   - a direct get of its own target;
//   - its own target as it is written;
//   - its own commands.
func (a *accounts) agent(id string) (*server.Account, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if acc, ok := a.agents[id]; ok {
		return acc, nil
	}
	acc, err := a.ns.RegisterAccount(id)
	if err != nil {
		return nil, fmt.Errorf("broker: account of %s: %w", id, err)
	}
	err = errors.Join(
		acc.AddServiceImport(a.cp, protocol.AgentSubjects(id), ""),
		acc.AddServiceImport(a.cp, protocol.TargetGetSubject(id), ""),
		acc.AddStreamImport(a.cp, protocol.TargetSubject(id), ""),
		acc.AddStreamImport(a.cp, protocol.CommandSubject(id), ""),
	)
	if err != nil {
		return nil, fmt.Errorf("broker: account of %s: %w", id, err)
	}
	a.agents[id] = acc
	return acc, nil
}
