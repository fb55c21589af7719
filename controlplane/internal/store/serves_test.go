package store_test

import (
	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/rollout/engine"
)

// The domains declare what they need from storage; the store serves it.
// The check lives in a test so the store does not link the domains' services.
var (
	_ accounts.Store    = (*store.Store)(nil)
	_ accounts.KeyStore = (*store.Store)(nil)
	_ billing.Store     = (*store.Store)(nil)
	_ engine.Store      = (*store.Store)(nil)
)
