package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/internal/config"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/internal/secrets"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	dashboardapi "github.com/stackpro/stackpro/dashboard-api"
)

// newBilling builds billing: Stripe with the keys cfg refers to, or the
// local stand-in.
func newBilling(ctx context.Context, cfg config.Config, st *store.Store, sender mail.Sender, insts billing.Instances,
	awsConfig func() (aws.Config, error), log *slog.Logger) (*billing.Service, error) {
	b := cfg.Billing
	base := cfg.BaseURL()
	o := billing.Options{Store: st, Plans: map[string]billing.Plan{}, Currency: b.Currency, GracePeriod: b.GracePeriod,
		SuccessURL: cmp.Or(b.SuccessURL, base+"/billing/success"), CancelURL: cmp.Or(b.CancelURL, base+"/billing/canceled"),
		PortalReturnURL: cmp.Or(b.PortalReturnURL, base+"/billing"), Instances: insts, Mail: sender, BaseURL: base, Log: log}
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

// instancesAPI lets billing run provisioning jobs.
type instancesAPI struct {
	s       *provision.Service
	tracker *fleet.Tracker
}

func (i instancesAPI) ProvisionOnce(key, customer, plan string) (fleet.Job, error) {
	return i.s.ProvisionOnce(key, customer, plan)
}

func (i instancesAPI) Get(id string) (fleet.Instance, bool) {
	inst, err := i.tracker.Get(id, time.Now())
	return inst, err == nil
}

func busy(_ fleet.Job, err error) error {
	if errors.Is(err, provision.ErrBusy) {
		return fmt.Errorf("%w: %w", billing.ErrBusy, err)
	}
	return err
}

func (i instancesAPI) Suspend(id string) error   { return busy(i.s.Suspend(id)) }
func (i instancesAPI) Resume(id string) error    { return busy(i.s.Resume(id)) }
func (i instancesAPI) Terminate(id string) error { return busy(i.s.Terminate(id)) }
func (i instancesAPI) Resize(id, plan string) error {
	return busy(i.s.Resize(id, plan))
}

// billingAPI serves billing to dashboard-api.
type billingAPI struct{ *billing.Service }

// billingErr maps billing's expected errors to dashboard-api's.
func billingErr(err error) error {
	for _, m := range []struct{ from, to error }{{billing.ErrInvalid, dashboardapi.ErrInvalid},
		{billing.ErrNotFound, dashboardapi.ErrNotFound}, {billing.ErrConflict, dashboardapi.ErrConflict}} {
		if errors.Is(err, m.from) {
			return fmt.Errorf("%w: %s", m.to, strings.TrimPrefix(err.Error(), m.from.Error()+": "))
		}
	}
	return err
}

func (b billingAPI) Checkout(ctx context.Context, customerID, plan string) (string, error) {
	url, err := b.Service.Checkout(ctx, customerID, plan)
	return url, billingErr(err)
}

func (b billingAPI) Portal(ctx context.Context, customerID string) (string, error) {
	url, err := b.Service.Portal(ctx, customerID)
	return url, billingErr(err)
}

func (b billingAPI) Subscription(customerID string) (fleet.Subscription, error) {
	sub, err := b.Service.Subscription(customerID)
	return sub, billingErr(err)
}

func (b billingAPI) Webhook(payload []byte, signature string) error {
	return billingErr(b.Service.Webhook(payload, signature))
}
