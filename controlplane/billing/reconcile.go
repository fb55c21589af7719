package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/controlplane/provision"
)

// Retry intervals: busyRetry while a job works on the instance,
// errorRetry after an error.
const (
	busyRetry  = 5 * time.Second
	errorRetry = 30 * time.Second
)

// reconcileDue looks at every customer whose look is due and returns when
// the next one is (zero if none).
func (s *Service) reconcileDue(ctx context.Context) time.Time {
	due, err := s.o.Store.BillingDue()
	if err != nil {
		s.log.Error("reading billing due", "err", err)
		return s.o.Now().Add(errorRetry)
	}
	var next time.Time
	for customer, at := range due {
		if ctx.Err() != nil {
			return next
		}
		if at.After(s.o.Now()) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		again, err := s.reconcile(customer)
		if err != nil {
			s.log.Error("billing: bringing an instance in line with its subscription", "customer", customer, "err", err)
			again = s.o.Now().Add(errorRetry)
		}
		if again.IsZero() {
			err = s.o.Store.ClearBillingDue(customer, at)
		} else {
			err = s.o.Store.SetBillingDue(customer, again)
			if next.IsZero() || again.Before(next) {
				next = again
			}
		}
		if err != nil {
			s.log.Error("billing due", "customer", customer, "err", err)
		}
	}
	return next
}

// reconcile starts what job the customer's subscription asks of its
// instance, and returns when to look again (zero: all is as it should be).
func (s *Service) reconcile(customer string) (time.Time, error) {
	sub, err := s.o.Store.Subscription(customer)
	if err != nil {
		return time.Time{}, err
	}
	now := s.o.Now()
	switch {
	case sub.Status.Paying() && sub.InstanceID == "":
		return s.provision(sub)
	case sub.InstanceID == "":
		return time.Time{}, nil
	}
	inst, err := s.o.Fleet.Get(sub.InstanceID, now)
	if errors.Is(err, fault.ErrNotFound) {
		return time.Time{}, nil // terminated
	}
	if err != nil {
		return time.Time{}, err
	}
	if inst.Job != "" {
		return now.Add(busyRetry), nil
	}
	var act func() (provision.Job, error)
	switch {
	case sub.Status.Paying() && inst.Lifecycle == fleet.LifecycleSuspended:
		act = func() (provision.Job, error) { return s.o.Instances.Resume(inst.ID) }
	case sub.Status.Paying() && sub.Plan != "" && inst.Plan != sub.Plan:
		act = func() (provision.Job, error) { return s.o.Instances.Resize(inst.ID, sub.Plan) }
	case sub.Status == SubscriptionCanceled && !now.Before(sub.TerminateAt):
		act = func() (provision.Job, error) { return s.o.Instances.Terminate(inst.ID) }
	case sub.Status == SubscriptionCanceled && inst.Lifecycle != fleet.LifecycleSuspended:
		act = func() (provision.Job, error) { return s.o.Instances.Suspend(inst.ID) }
	case sub.Status == SubscriptionCanceled:
		return sub.TerminateAt, nil
	default:
		return time.Time{}, nil
	}
	if _, err := act(); err != nil && !errors.Is(err, fault.ErrBusy) {
		return time.Time{}, err
	}
	// Look again once the job is done: something else may be due.
	return now.Add(busyRetry), nil
}

// provision starts the customer's instance, once per checkout.
func (s *Service) provision(sub Subscription) (time.Time, error) {
	if sub.Plan == "" {
		return time.Time{}, nil // the event that names the plan will ask again
	}
	key := sub.ProvisionKey
	if key == "" {
		key = "subscription:" + sub.StripeSubscription
	}
	job, err := s.o.Instances.ProvisionOnce(key, sub.CustomerID, sub.Plan)
	if err != nil {
		return time.Time{}, err
	}
	_, err = s.o.Store.UpdateSubscription(sub.CustomerID, s.now(), func(sub *Subscription) error {
		sub.InstanceID = job.InstanceID
		if job.State == provision.JobFailed {
			sub.Note = "provisioning failed: " + job.Error
		}
		return nil
	})
	if err != nil || job.State == provision.JobFailed {
		return time.Time{}, err
	}
	s.log.Info("billing: instance provisioned for a subscription", "customer", sub.CustomerID, "instance", job.InstanceID, "job", job.ID)
	return s.o.Now().Add(busyRetry), nil
}

// sendMails sends the emails billing owes and returns when to retry those
// that failed (zero if none).
func (s *Service) sendMails(ctx context.Context) time.Time {
	mails, err := s.o.Store.BillingMails()
	if err != nil {
		s.log.Error("reading billing mail", "err", err)
		return s.o.Now().Add(errorRetry)
	}
	var retry time.Time
	for _, m := range mails {
		if err := s.sendMail(ctx, m); err != nil {
			s.log.Warn("billing email not sent; will retry", "customer", m.CustomerID, "kind", m.Kind, "err", err)
			retry = s.o.Now().Add(errorRetry)
			continue
		}
		if err := s.o.Store.DeleteBillingMail(m.Key); err != nil {
			s.log.Error("billing mail", "err", err)
		}
	}
	return retry
}

func (s *Service) sendMail(ctx context.Context, m OwedMail) error {
	users, err := s.o.Store.CustomerUsers(m.CustomerID)
	if err != nil {
		return err
	}
	var subject, text string
	switch m.Kind {
	case mailPaymentFailed:
		subject = "Your StackPro payment failed"
		text = fmt.Sprintf("We could not take your payment of %s.\n\nYour server keeps running while we retry", m.Data["amount"])
		if next := m.Data["next_attempt"]; next != "" {
			text += " on " + next
		}
		text += ". To pay now or change your card:\n\n"
		if url := m.Data["invoice_url"]; url != "" {
			text += url + "\n\n"
		}
		text += "or manage billing at " + s.o.BaseURL + "/billing\n"
	case mailTrialWillEnd:
		subject = "Your StackPro trial ends soon"
		text = fmt.Sprintf("Your free trial ends on %s. Your subscription starts then, with the card you gave.\n\nManage billing at %s/billing\n",
			m.Data["trial_end"], s.o.BaseURL)
	default:
		return fmt.Errorf("unknown mail kind %q", m.Kind)
	}
	for _, u := range users {
		if err := s.o.Mail.Send(ctx, mail.Message{To: u.Email, Subject: subject, Text: text}); err != nil {
			return err
		}
	}
	return nil
}
