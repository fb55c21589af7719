package billing

import (
	"context"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Hooks for the tests of package billing_test, which are external because
// they open the store, and the store imports billing for its records.

// MetaCustomer and MetaPlan are the metadata keys billing sets on Stripe objects.
const (
	MetaCustomer = metaCustomer
	MetaPlan     = metaPlan
)

// Settle does one round of Run's work: the queued events, the looks that
// are due and the mail that is owed.
func (s *Service) Settle(ctx context.Context) error {
	if err := s.applyQueued(ctx); err != nil {
		return err
	}
	s.reconcileDue(ctx)
	s.sendMails(ctx)
	return nil
}

// Applied counts the events applied with outcome.
func (s *Service) Applied(outcome string) float64 {
	return testutil.ToFloat64(s.counters.applied.WithLabelValues(outcome))
}
