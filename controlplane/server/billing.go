package server

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/internal/config"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/controlplane/internal/secrets"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	dashboardapi "github.com/stackpro/stackpro/dashboard-api"
)

// newBilling builds billing: Stripe with the keys cfg refers to, or the
// local stand-in.
func newBilling(ctx context.Context, cfg config.Config, st *store.Store, sender mail.Sender, insts billing.Instances,
	fl billing.Fleet, awsConfig func() (aws.Config, error), log *slog.Logger) (*billing.Service, error) {
	b := cfg.Billing
	base := cfg.BaseURL()
	o := billing.Options{Store: st, Plans: map[string]billing.Plan{}, Currency: b.Currency, GracePeriod: b.GracePeriod,
		SuccessURL: cmp.Or(b.SuccessURL, base+"/billing/success"), CancelURL: cmp.Or(b.CancelURL, base+"/billing/canceled"),
		PortalReturnURL: cmp.Or(b.PortalReturnURL, base+"/billing"), Instances: insts, Fleet: fl, Mail: sender, BaseURL: base, Log: log}
	for name, p := range cfg.Plans {
		o.Plans[name] = billing.Plan{PriceID: p.PriceID, MonthlyPrice: int64(p.MonthlyPrice)}
	}
	if b.Provider == "stripe" {
		key, err := secrets.Resolve(ctx, b.SecretKey, awsConfig)
		if err != nil {
			return nil, fmt.Errorf("billing.secret_key: %w", err)
		}
		whsec, err := secrets.Resolve(ctx, b.WebhookSecret, awsConfig)
		if err != nil {
			return nil, fmt.Errorf("billing.webhook_secret: %w", err)
		}
		o.Stripe, o.WebhookSecret = billing.NewStripe(key.Reveal(), b.APIBase), whsec.Reveal()
	}
	return billing.New(o), nil
}

// plansOnOffer lists cfg's plans for dashboard-api, cheapest first.
func plansOnOffer(cfg config.Config) []dashboardapi.Plan {
	var out []dashboardapi.Plan
	for name, p := range cfg.Plans {
		out = append(out, dashboardapi.Plan{Name: name, MonthlyPrice: int64(p.MonthlyPrice), Currency: cfg.Billing.Currency,
			InstanceType: p.InstanceType, BackupSchedule: cmp.Or(p.BackupSchedule, "@daily"),
			Quotas: dashboardapi.Quotas{SMS: p.Quotas.SMS, WhatsApp: p.Quotas.WhatsApp, Email: p.Quotas.Email}})
	}
	slices.SortFunc(out, func(a, b dashboardapi.Plan) int {
		return cmp.Or(cmp.Compare(a.MonthlyPrice, b.MonthlyPrice), strings.Compare(a.Name, b.Name))
	})
	return out
}
