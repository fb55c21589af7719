// Package ec2 is the provider that runs each instance on its own EC2
// machine: booted from its plan's AMI, handed the agent's bootstrap file in
// cloud-init user data, held to IMDSv2, and tagged with the instance it
// serves so that an operator can tell the machines apart.
package ec2

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/shared/protocol"
)

// ec2API is the part of the EC2 client the provider uses.
type ec2API interface {
	RunInstances(context.Context, *ec2.RunInstancesInput, ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	StopInstances(context.Context, *ec2.StopInstancesInput, ...func(*ec2.Options)) (*ec2.StopInstancesOutput, error)
	ModifyInstanceAttribute(context.Context, *ec2.ModifyInstanceAttributeInput, ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error)
	StartInstances(context.Context, *ec2.StartInstancesInput, ...func(*ec2.Options)) (*ec2.StartInstancesOutput, error)
	TerminateInstances(context.Context, *ec2.TerminateInstancesInput, ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
	CreateSnapshot(context.Context, *ec2.CreateSnapshotInput, ...func(*ec2.Options)) (*ec2.CreateSnapshotOutput, error)
	DescribeSnapshots(context.Context, *ec2.DescribeSnapshotsInput, ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error)
}

var _ ec2API = (*ec2.Client)(nil)

// Options configures a Provider.
type Options struct {
	// AMIs maps a plan to the image its machines boot; a plan not in it
	// boots DefaultAMI.
	AMIs             map[string]string
	DefaultAMI       string
	SubnetID         string
	SecurityGroupIDs []string
	// InstanceProfile is the IAM instance profile machines get, by name or
	// ARN; empty for none.
	InstanceProfile string
	// KeyName is the key pair for SSH; empty for none.
	KeyName string
	// PublicAddress makes WaitRunning return a machine's public IP address
	// instead of its private one.
	PublicAddress bool
	// PollInterval is how often a wait asks EC2 again; 15 s if zero.
	PollInterval time.Duration
	Log          *slog.Logger
}

// Provider runs instances as EC2 machines.
type Provider struct {
	api ec2API
	o   Options
	log *slog.Logger
}

var (
	_ provision.Provider    = (*Provider)(nil)
	_ provision.Snapshotter = (*Provider)(nil)
)

// New returns a provider whose EC2 client is made from cfg.
func New(cfg aws.Config, o Options) *Provider {
	o.PollInterval = cmp.Or(o.PollInterval, 15*time.Second)
	return &Provider{api: ec2.NewFromConfig(cfg), o: o, log: o.Log.With("component", "ec2-provider")}
}

// Name is "ec2".
func (p *Provider) Name() string { return "ec2" }

// Tags every machine, volume and snapshot carries; snapshots carry
// tagToken too.
const (
	tagManagedBy = "ManagedBy"
	tagInstance  = "StackProInstance"
	tagToken     = "StackProToken"
	managedBy    = "StackPro"
)

// Error codes of EC2's answers.
const (
	codeNotFound      = "InvalidInstanceID.NotFound"
	codeTokenMismatch = "IdempotentParameterMismatch"
)

// agentConfig is where the AMI's stackpro-agent.service reads its bootstrap file.
const agentConfig = "/etc/stackpro/agent.yaml"

// Launch runs the machine for spec and returns its EC2 id. The launch
// carries spec's client token, so a retry after a crash between
// RunInstances and saving its answer gets the same machine back.
func (p *Provider) Launch(ctx context.Context, spec provision.LaunchSpec) (string, error) {
	ami := cmp.Or(p.o.AMIs[spec.Plan], p.o.DefaultAMI)
	if ami == "" {
		return "", fmt.Errorf("ec2: no AMI for plan %q", spec.Plan)
	}
	userData, err := cloudConfig(spec)
	if err != nil {
		return "", err
	}
	token := clientToken(spec.ClientToken)
	tags := []types.Tag{
		{Key: aws.String("Name"), Value: aws.String("stackpro-" + spec.InstanceID)},
		{Key: aws.String("Customer"), Value: aws.String(spec.Customer)},
		{Key: aws.String("Plan"), Value: aws.String(spec.Plan)},
		{Key: aws.String(tagManagedBy), Value: aws.String(managedBy)},
		{Key: aws.String(tagInstance), Value: aws.String(spec.InstanceID)},
	}
	in := &ec2.RunInstancesInput{
		ImageId: aws.String(ami), InstanceType: types.InstanceType(spec.InstanceType),
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1), ClientToken: aws.String(token),
		SubnetId: optional(p.o.SubnetID), SecurityGroupIds: p.o.SecurityGroupIDs, KeyName: optional(p.o.KeyName),
		MetadataOptions: &types.InstanceMetadataOptionsRequest{HttpEndpoint: types.InstanceMetadataEndpointStateEnabled,
			HttpTokens: types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(1)},
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeInstance, Tags: tags},
			{ResourceType: types.ResourceTypeVolume, Tags: tags}},
		UserData: aws.String(base64.StdEncoding.EncodeToString(userData)),
	}
	if profile := p.o.InstanceProfile; strings.HasPrefix(profile, "arn:") {
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Arn: aws.String(profile)}
	} else if profile != "" {
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String(profile)}
	}
	out, err := p.api.RunInstances(ctx, in)
	if errorCode(err) == codeTokenMismatch {
		return p.adopt(ctx, spec.InstanceID, token)
	}
	if err != nil {
		return "", fmt.Errorf("ec2: launching %s: %w", spec.InstanceID, err)
	}
	if len(out.Instances) != 1 {
		return "", fmt.Errorf("ec2: launching %s: EC2 answered with %d machines, want 1", spec.InstanceID, len(out.Instances))
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	p.log.Info("machine launched", "instance", spec.InstanceID, "ec2_instance", id, "type", spec.InstanceType, "ami", ami)
	return id, nil
}

// adopt returns the machine an earlier try launched with token. EC2 answers
// IdempotentParameterMismatch when a client token comes back with other
// parameters: the configuration changed between the tries (a new AMI, say).
// The machine that try started is still this instance's, and launching
// another would leave it running unseen; so it is kept as it is, and the
// later steps (enrollment, health) tell whether it will do.
func (p *Provider) adopt(ctx context.Context, instanceID, token string) (string, error) {
	out, err := p.api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("client-token"), Values: []string{token}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}},
	}})
	if err != nil {
		return "", fmt.Errorf("ec2: finding the machine an earlier launch of %s started: %w", instanceID, err)
	}
	for _, r := range out.Reservations {
		for _, inst := range r.Instances {
			id := aws.ToString(inst.InstanceId)
			p.log.Warn("launch parameters changed since an earlier try: keeping the machine it started",
				"instance", instanceID, "ec2_instance", id, "client_token", token)
			return id, nil
		}
	}
	return "", fmt.Errorf("ec2: launching %s: client token %s belongs to an earlier launch with other parameters, whose machine is gone",
		instanceID, token)
}

// WaitRunning waits, until ctx's deadline, for the machine to run and
// returns its private IP address (its public one with PublicAddress).
func (p *Provider) WaitRunning(ctx context.Context, providerID string) (string, error) {
	out, err := ec2.NewInstanceRunningWaiter(p.api, func(o *ec2.InstanceRunningWaiterOptions) {
		o.MinDelay, o.MaxDelay = p.o.PollInterval, p.o.PollInterval
	}).WaitForOutput(ctx, byID(providerID), maxWait(ctx))
	if err != nil {
		return "", fmt.Errorf("ec2: waiting for %s to run: %w", providerID, err)
	}
	inst := out.Reservations[0].Instances[0] // the waiter succeeds only on a machine it saw
	addr, kind := inst.PrivateIpAddress, "private"
	if p.o.PublicAddress {
		addr, kind = inst.PublicIpAddress, "public"
	}
	if aws.ToString(addr) == "" {
		return "", fmt.Errorf("ec2: %s runs without a %s IP address", providerID, kind)
	}
	return *addr, nil
}

// Resize stops the machine, gives it instanceType and starts it again; the
// job's wait_running step waits for it to run. A retry picks up where an
// earlier try stopped; a machine running with that type already is left
// alone.
func (p *Provider) Resize(ctx context.Context, providerID, instanceType string) error {
	inst, err := p.describe(ctx, providerID)
	if err != nil {
		return err
	}
	running := inst.State != nil && inst.State.Name == types.InstanceStateNameRunning
	if string(inst.InstanceType) == instanceType && running {
		return nil
	}
	ids := []string{providerID}
	if string(inst.InstanceType) != instanceType {
		if _, err := p.api.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: ids}); err != nil {
			return fmt.Errorf("ec2: stopping %s: %w", providerID, err)
		}
		if err := ec2.NewInstanceStoppedWaiter(p.api, func(o *ec2.InstanceStoppedWaiterOptions) {
			o.MinDelay, o.MaxDelay = p.o.PollInterval, p.o.PollInterval
		}).Wait(ctx, byID(providerID), maxWait(ctx)); err != nil {
			return fmt.Errorf("ec2: waiting for %s to stop: %w", providerID, err)
		}
		if _, err := p.api.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{InstanceId: aws.String(providerID),
			InstanceType: &types.AttributeValue{Value: aws.String(instanceType)}}); err != nil {
			return fmt.Errorf("ec2: giving %s type %s: %w", providerID, instanceType, err)
		}
	}
	if _, err := p.api.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: ids}); err != nil {
		return fmt.Errorf("ec2: starting %s: %w", providerID, err)
	}
	p.log.Info("machine resized", "ec2_instance", providerID, "from", inst.InstanceType, "to", instanceType)
	return nil
}

// Terminate terminates the machine and waits until it is gone. One EC2 no
// longer knows, or none launched, is not an error.
func (p *Provider) Terminate(ctx context.Context, instanceID, providerID string) error {
	if providerID == "" {
		return nil
	}
	_, err := p.api.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{providerID}})
	if errorCode(err) == codeNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ec2: terminating %s: %w", providerID, err)
	}
	err = ec2.NewInstanceTerminatedWaiter(p.api, func(o *ec2.InstanceTerminatedWaiterOptions) {
		o.MinDelay, o.MaxDelay = p.o.PollInterval, p.o.PollInterval
	}).Wait(ctx, byID(providerID), maxWait(ctx))
	if err != nil && errorCode(err) != codeNotFound {
		return fmt.Errorf("ec2: waiting for %s to terminate: %w", providerID, err)
	}
	p.log.Info("machine terminated", "instance", instanceID, "ec2_instance", providerID)
	return nil
}

// Snapshot snapshots every EBS volume of the machine, tagged with the
// instance it served and with token, and returns the snapshots' ids. A
// volume that already has a snapshot with token (taken by a try that
// crashed before it could say so) gets no second one. A snapshot holds the
// volume as it was when CreateSnapshot answered, so the machine may be
// terminated while it completes. A machine EC2 no longer knows has nothing
// to snapshot.
func (p *Provider) Snapshot(ctx context.Context, providerID, token string) ([]string, error) {
	if providerID == "" {
		return nil, nil
	}
	inst, err := p.describe(ctx, providerID)
	if errorCode(err) == codeNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	instanceID := providerID
	for _, t := range inst.Tags {
		if aws.ToString(t.Key) == tagInstance {
			instanceID = aws.ToString(t.Value)
		}
	}
	taken, err := p.snapshots(ctx, token)
	if err != nil {
		return nil, fmt.Errorf("ec2: snapshots of %s: %w", providerID, err)
	}
	var ids, created []string
	for _, bd := range inst.BlockDeviceMappings {
		if bd.Ebs == nil || bd.Ebs.VolumeId == nil {
			continue
		}
		if id, ok := taken[*bd.Ebs.VolumeId]; ok {
			ids = append(ids, id)
			continue
		}
		out, err := p.api.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: bd.Ebs.VolumeId,
			Description: aws.String("StackPro: " + aws.ToString(bd.DeviceName) + " of " + instanceID),
			TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeSnapshot, Tags: []types.Tag{
				{Key: aws.String("Name"), Value: aws.String("stackpro-" + instanceID)},
				{Key: aws.String(tagManagedBy), Value: aws.String(managedBy)},
				{Key: aws.String(tagInstance), Value: aws.String(instanceID)},
				{Key: aws.String(tagToken), Value: aws.String(token)},
			}}}})
		if err != nil {
			return nil, fmt.Errorf("ec2: snapshot of %s (%s): %w", *bd.Ebs.VolumeId, providerID, err)
		}
		ids = append(ids, aws.ToString(out.SnapshotId))
		created = append(created, aws.ToString(out.SnapshotId))
	}
	p.log.Info("snapshots taken", "instance", instanceID, "ec2_instance", providerID, "snapshots", ids, "new", created)
	return ids, nil
}

// snapshots returns our snapshots tagged with token, by the volume they
// are of. One that failed does not count: the volume needs another.
func (p *Provider) snapshots(ctx context.Context, token string) (map[string]string, error) {
	byVolume := map[string]string{}
	pages := ec2.NewDescribeSnapshotsPaginator(p.api, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"},
		Filters: []types.Filter{{Name: aws.String("tag:" + tagToken), Values: []string{token}}}})
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, snap := range out.Snapshots {
			if snap.State != types.SnapshotStateError {
				byVolume[aws.ToString(snap.VolumeId)] = aws.ToString(snap.SnapshotId)
			}
		}
	}
	return byVolume, nil
}

// describe returns the machine with EC2 id id.
func (p *Provider) describe(ctx context.Context, id string) (types.Instance, error) {
	out, err := p.api.DescribeInstances(ctx, byID(id))
	if err != nil {
		return types.Instance{}, fmt.Errorf("ec2: describing %s: %w", id, err)
	}
	for _, r := range out.Reservations {
		for _, inst := range r.Instances {
			return inst, nil
		}
	}
	return types.Instance{}, fmt.Errorf("ec2: describing %s: no such machine", id)
}

func byID(id string) *ec2.DescribeInstancesInput {
	return &ec2.DescribeInstancesInput{InstanceIds: []string{id}}
}

// maxWait is what is left until ctx's deadline, or an hour if it has none:
// a waiter wants a bound of its own.
func maxWait(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return time.Until(d)
	}
	return time.Hour
}

// errorCode is the code of the AWS error in err, or "".
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// clientToken is token as EC2 takes one: at most 64 ASCII characters. A
// longer one becomes its SHA-256 in hex, the same on every retry.
func clientToken(token string) string {
	if len(token) <= 64 && strings.IndexFunc(token, func(r rune) bool { return r > unicode.MaxASCII }) < 0 {
		return token
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// cloudConfig is a machine's user data: a cloud-config that writes the
// agent's bootstrap file, readable by root alone, and starts the agent. It holds the
// enrollment token, so it is never logged. --no-block keeps cloud-init from
// waiting on a unit that may be ordered after cloud-init itself.
func cloudConfig(spec provision.LaunchSpec) ([]byte, error) {
	boot, err := yaml.Marshal(protocol.Bootstrap{InstanceID: spec.InstanceID, NATSURL: spec.NATSURL,
		EnrollmentToken: spec.EnrollmentToken, HeartbeatInterval: spec.HeartbeatInterval, MetricsInterval: spec.MetricsInterval,
		CommandKey: spec.CommandKey})
	if err != nil {
		return nil, fmt.Errorf("ec2: bootstrap file: %w", err)
	}
	doc, err := yaml.Marshal(map[string]any{
		"write_files": []map[string]string{{"path": agentConfig, "owner": "root:root", "permissions": "0600",
			"content": string(boot)}},
		"runcmd": [][]string{{"systemctl", "enable", "--now", "--no-block", "stackpro-agent.service"}},
	})
	if err != nil {
		return nil, fmt.Errorf("ec2: user data: %w", err)
	}
	return append([]byte("#cloud-config\n"), doc...), nil
}
