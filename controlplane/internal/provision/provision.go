// Package provision brings instances into the fleet and takes them out:
// it records the instance, mints its one-time enrollment token and asks a
// provider to launch it; termination runs the other way.
package provision

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/targets"
	"github.com/stackpro/stackpro/deploy/stacks"
	"github.com/stackpro/stackpro/shared/protocol"
)

// LaunchSpec is what a provider needs to start an instance whose agent can enroll.
type LaunchSpec struct {
	InstanceID      string
	EnrollmentToken string
	NATSURL         string
	// Intervals the agent reports at.
	HeartbeatInterval, MetricsInterval time.Duration
}

// Provider starts and stops the machines instances run on.
type Provider interface {
	Name() string
	Launch(ctx context.Context, spec LaunchSpec) error
	// Terminate stops the instance and frees what it held; terminating an
	// instance that is already gone is not an error.
	Terminate(ctx context.Context, instanceID string) error
}

// Store is what provisioning records.
type Store interface {
	PutInstances(insts ...fleet.Instance) error
	MintToken(instanceID string, ttl time.Duration, now time.Time) (string, error)
	DeleteInstance(id string) error
}

// Targets keeps what each instance should run.
type Targets interface {
	Set(ctx context.Context, instanceID string, spec targets.Spec) (protocol.Target, error)
	Delete(ctx context.Context, instanceID string) error
}

// Revoker takes an instance's credentials away from the broker.
type Revoker interface {
	Revoke(instanceID string)
}

// Options configures a Service.
type Options struct {
	Provider Provider
	Store    Store
	Tracker  *fleet.Tracker
	Broker   Revoker
	Targets  Targets
	NATSURL  string
	TokenTTL time.Duration
	// Plan names the stack template new instances start with, and
	// StackImage the image its services run.
	Plan, StackImage string
	// Intervals the agents are told to report at.
	HeartbeatInterval, MetricsInterval time.Duration
	Log                                *slog.Logger
}

// Service launches and terminates instances.
type Service struct {
	o   Options
	log *slog.Logger
}

// New returns a Service.
func New(o Options) *Service {
	return &Service{o: o, log: o.Log.With("component", "provision", "provider", o.Provider.Name())}
}

// NewInstanceID returns a fresh id in the form of an EC2 instance id.
func NewInstanceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "i-" + hex.EncodeToString(b[:])
}

// Launch records a new instance, mints its enrollment token and launches
// it. If the launch fails, the record is removed again.
func (s *Service) Launch(ctx context.Context) (fleet.Instance, error) {
	now := time.Now().UTC()
	inst := fleet.Instance{ID: NewInstanceID(), Provider: s.o.Provider.Name(), CreatedAt: now}
	if err := s.o.Store.PutInstances(inst); err != nil {
		return fleet.Instance{}, fmt.Errorf("provision: %w", err)
	}
	token, err := s.o.Store.MintToken(inst.ID, s.o.TokenTTL, now)
	if err == nil {
		err = s.setInitialTarget(ctx, inst.ID)
	}
	if err == nil {
		s.o.Tracker.Put(inst)
		err = s.o.Provider.Launch(ctx, LaunchSpec{
			InstanceID: inst.ID, EnrollmentToken: token, NATSURL: s.o.NATSURL,
			HeartbeatInterval: s.o.HeartbeatInterval, MetricsInterval: s.o.MetricsInterval,
		})
	}
	if err != nil {
		s.o.Tracker.Remove(inst.ID)
		err = errors.Join(err, s.o.Targets.Delete(ctx, inst.ID), s.o.Store.DeleteInstance(inst.ID))
		return fleet.Instance{}, fmt.Errorf("provision: launching %s: %w", inst.ID, err)
	}
	s.log.Info("instance launched", "instance", inst.ID)
	return inst, nil
}

// setInitialTarget renders the plan's stack template for instance id and
// makes it the instance's first target.
func (s *Service) setInitialTarget(ctx context.Context, id string) error {
	compose, err := stacks.Render(s.o.Plan, stacks.Params{InstanceID: id, Subdomain: id, Image: s.o.StackImage})
	if err != nil {
		return err
	}
	_, err = s.o.Targets.Set(ctx, id, targets.Spec{Compose: compose})
	return err
}

// Terminate stops instance id, revokes its credentials and forgets it.
func (s *Service) Terminate(ctx context.Context, id string) error {
	if err := s.o.Provider.Terminate(ctx, id); err != nil {
		return fmt.Errorf("provision: terminating %s: %w", id, err)
	}
	s.o.Broker.Revoke(id)
	if err := s.o.Targets.Delete(ctx, id); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	if err := s.o.Store.DeleteInstance(id); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	s.o.Tracker.Remove(id)
	s.log.Info("instance terminated", "instance", id)
	return nil
}
