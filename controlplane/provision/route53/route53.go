// Package route53 is the DNS that keeps each instance's A record in an
// Amazon Route 53 hosted zone.
package route53

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/stackpro/stackpro/controlplane/provision"
)

// route53API is the part of the Route 53 client the DNS uses.
type route53API interface {
	ChangeResourceRecordSets(context.Context, *route53.ChangeResourceRecordSetsInput, ...func(*route53.Options)) (*route53.ChangeResourceRecordSetsOutput, error)
	GetChange(context.Context, *route53.GetChangeInput, ...func(*route53.Options)) (*route53.GetChangeOutput, error)
}

var _ route53API = (*route53.Client)(nil)

// Options configures a DNS.
type Options struct {
	HostedZoneID string
	// TTL of the records; 60 s if zero.
	TTL time.Duration
	// PollInterval is how often Upsert asks whether its change is live; 15 s if zero.
	PollInterval time.Duration
}

// DNS keeps A records in one hosted zone.
type DNS struct {
	api route53API
	o   Options
}

var _ provision.DNS = (*DNS)(nil)

// New returns a DNS whose Route 53 client is made from cfg.
func New(cfg aws.Config, o Options) *DNS {
	o.TTL = cmp.Or(o.TTL, time.Minute)
	o.PollInterval = cmp.Or(o.PollInterval, 15*time.Second)
	return &DNS{api: route53.NewFromConfig(cfg), o: o}
}

// Upsert creates or replaces name's A record and waits, until ctx's
// deadline, for Route 53 to serve it.
func (d *DNS) Upsert(ctx context.Context, name, address string) error {
	out, err := d.change(ctx, types.ChangeActionUpsert, name, address)
	if err != nil {
		return fmt.Errorf("route53: upserting %s A %s: %w", name, address, err)
	}
	maxWait := time.Hour
	if deadline, ok := ctx.Deadline(); ok {
		maxWait = time.Until(deadline)
	}
	err = route53.NewResourceRecordSetsChangedWaiter(d.api, func(o *route53.ResourceRecordSetsChangedWaiterOptions) {
		o.MinDelay, o.MaxDelay = d.o.PollInterval, d.o.PollInterval
	}).Wait(ctx, &route53.GetChangeInput{Id: out.ChangeInfo.Id}, maxWait)
	if err != nil {
		return fmt.Errorf("route53: waiting for %s A %s to be served: %w", name, address, err)
	}
	return nil
}

// Delete removes name's A record to address; one already gone is not an
// error. Route 53 deletes only a record that matches in every field, so
// one whose TTL was changed outside StackPro is refused, not deleted.
func (d *DNS) Delete(ctx context.Context, name, address string) error {
	_, err := d.change(ctx, types.ChangeActionDelete, name, address)
	if err != nil && !notFound(err) {
		return fmt.Errorf("route53: deleting %s A %s: %w", name, address, err)
	}
	return nil
}

func (d *DNS) change(ctx context.Context, action types.ChangeAction, name, address string) (*route53.ChangeResourceRecordSetsOutput, error) {
	return d.api.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{
		HostedZoneId: aws.String(d.o.HostedZoneID),
		ChangeBatch: &types.ChangeBatch{Changes: []types.Change{{Action: action, ResourceRecordSet: &types.ResourceRecordSet{
			Name: aws.String(name), Type: types.RRTypeA, TTL: aws.Int64(int64(d.o.TTL / time.Second)),
			ResourceRecords: []types.ResourceRecord{{Value: aws.String(address)}},
		}}}},
	})
}

// notFound reports whether err is Route 53 refusing to delete a record
// that does not exist. Route 53 has no error code of its own for that: it
// answers InvalidChangeBatch, the code of every invalid batch, with the
// message "Tried to delete resource record set [...] but it was not found".
// The message is the only signal, so it is matched here, and nowhere else.
// The message comes in Message, or in Messages when Route 53 answers with
// its InvalidChangeBatch document rather than the usual ErrorResponse.
func notFound(err error) bool {
	var batch *types.InvalidChangeBatch
	if !errors.As(err, &batch) {
		return false
	}
	for _, msg := range append([]string{batch.ErrorMessage()}, batch.Messages...) {
		if strings.Contains(msg, "but it was not found") {
			return true
		}
	}
	return false
}
