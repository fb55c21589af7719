package provision

import "context"

// DNSRecord is an A record of the embedded default's zone.
type DNSRecord struct {
	Name    string `json:"name"`
	Address string `json:"address"`
}

// StoreDNS is the DNS of the embedded default: A records kept in the
// control plane's store.
type StoreDNS struct {
	Store interface {
		PutDNSRecord(rec DNSRecord) error
		DeleteDNSRecord(name string) error
	}
}

var _ DNS = StoreDNS{}

// Upsert creates or replaces name's record.
func (d StoreDNS) Upsert(_ context.Context, name, address string) error {
	return d.Store.PutDNSRecord(DNSRecord{Name: name, Address: address})
}

// Delete removes name's record.
func (d StoreDNS) Delete(_ context.Context, name, _ string) error {
	return d.Store.DeleteDNSRecord(name)
}
