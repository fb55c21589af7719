package broker

import "github.com/nats-io/nats-server/v2/server"

// Closed reports whether the server has closed client cid and sent its
// disconnect event: it lists a closed client only after that.
func (b *Broker) Closed(cid uint64) bool {
	c, err := b.ns.Connz(&server.ConnzOptions{CID: cid, State: server.ConnClosed})
	return err == nil && len(c.Conns) == 1
}
