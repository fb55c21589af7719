package ec2_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/provision/ec2"
	"github.com/stackpro/stackpro/shared/protocol"
)

// fakeEC2 speaks as much of EC2's query protocol as the provider uses. It
// keeps machines by client token, moves a machine one state on after each
// describe (pending → running, stopping → stopped, shutting-down →
// terminated), keeps the snapshots it takes, and records every request.
type fakeEC2 struct {
	mu        sync.Mutex
	requests  []url.Values
	machines  map[string]*machine // by EC2 id
	tokens    map[string]string   // client token → EC2 id
	snapshots []xmlSnapshot
}

type machine struct {
	xmlInstance
	launch url.Values // the RunInstances request that started it
}

type xmlInstance struct {
	ID        string      `xml:"instanceId"`
	Type      string      `xml:"instanceType"`
	State     string      `xml:"instanceState>name"`
	PrivateIP string      `xml:"privateIpAddress"`
	PublicIP  string      `xml:"ipAddress"`
	Volumes   []xmlVolume `xml:"blockDeviceMapping>item"`
	Tags      []xmlTag    `xml:"tagSet>item"`
}

type xmlSnapshot struct {
	ID       string   `xml:"snapshotId"`
	VolumeID string   `xml:"volumeId"`
	State    string   `xml:"status"`
	Tags     []xmlTag `xml:"tagSet>item"`
}

type xmlVolume struct {
	Device   string `xml:"deviceName"`
	VolumeID string `xml:"ebs>volumeId"`
}

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type instancesSet struct {
	Instances []xmlInstance `xml:"instancesSet>item"`
}

const ec2NS = "http://ec2.amazonaws.com/doc/2016-11-15/"

func (f *fakeEC2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		fail(w, "MalformedQueryString", "want a POSTed form")
		return
	}
	form := r.PostForm
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, form)
	if v := form.Get("Version"); v != "2016-11-15" {
		fail(w, "InvalidParameterValue", "unknown version "+v)
		return
	}
	action := form.Get("Action")
	switch action {
	case "RunInstances":
		token := form.Get("ClientToken")
		m, ok := f.machines[f.tokens[token]]
		if ok && m.launch.Encode() != form.Encode() {
			fail(w, "IdempotentParameterMismatch", "client token "+token+" was used with other parameters")
			return
		}
		if !ok {
			n := len(f.machines) + 1
			m = &machine{launch: form, xmlInstance: xmlInstance{ID: fmt.Sprintf("i-%017d", n), Type: form.Get("InstanceType"),
				State: "pending", PrivateIP: fmt.Sprintf("10.0.0.%d", n), PublicIP: fmt.Sprintf("203.0.113.%d", n),
				Volumes: []xmlVolume{{"/dev/xvda", fmt.Sprintf("vol-%da", n)}, {"/dev/xvdb", fmt.Sprintf("vol-%db", n)}}}}
			for k, v := range tagSpecs(form)["instance"] {
				m.Tags = append(m.Tags, xmlTag{k, v})
			}
			f.machines[m.ID], f.tokens[token] = m, m.ID
		}
		reply(w, action, instancesSet{[]xmlInstance{m.xmlInstance}})
	case "DescribeInstances":
		var found []*machine
		if id := form.Get("InstanceId.1"); id != "" {
			m, ok := f.machines[id]
			if !ok {
				fail(w, "InvalidInstanceID.NotFound", "The instance ID '"+id+"' does not exist")
				return
			}
			found = append(found, m)
		}
		for i := 1; form.Has(fmt.Sprintf("Filter.%d.Name", i)); i++ {
			if form.Get(fmt.Sprintf("Filter.%d.Name", i)) == "client-token" {
				if m, ok := f.machines[f.tokens[form.Get(fmt.Sprintf("Filter.%d.Value.1", i))]]; ok && m.State != "terminated" {
					found = append(found, m)
				}
			}
		}
		var res struct {
			Reservations []instancesSet `xml:"reservationSet>item"`
		}
		if len(found) > 0 {
			res.Reservations = append(res.Reservations, instancesSet{})
		}
		for _, m := range found {
			res.Reservations[0].Instances = append(res.Reservations[0].Instances, m.xmlInstance)
			if next, ok := settles[m.State]; ok {
				m.State = next
			}
		}
		reply(w, action, res)
	case "StopInstances", "StartInstances", "TerminateInstances":
		m, ok := f.machines[form.Get("InstanceId.1")]
		if !ok {
			fail(w, "InvalidInstanceID.NotFound", "The instance ID '"+form.Get("InstanceId.1")+"' does not exist")
			return
		}
		if m.State != "terminated" {
			m.State = map[string]string{"StopInstances": "stopping", "StartInstances": "pending", "TerminateInstances": "shutting-down"}[action]
		}
		reply(w, action, struct{}{})
	case "ModifyInstanceAttribute":
		m, ok := f.machines[form.Get("InstanceId")]
		if !ok || m.State != "stopped" {
			fail(w, "IncorrectInstanceState", "The instance is not in the 'stopped' state.")
			return
		}
		m.Type = form.Get("InstanceType.Value")
		reply(w, action, struct {
			Return bool `xml:"return"`
		}{true})
	case "CreateSnapshot":
		snap := xmlSnapshot{ID: fmt.Sprintf("snap-%d", len(f.snapshots)+1), VolumeID: form.Get("VolumeId"), State: "pending"}
		for k, v := range tagSpecs(form)["snapshot"] {
			snap.Tags = append(snap.Tags, xmlTag{k, v})
		}
		f.snapshots = append(f.snapshots, snap)
		reply(w, action, struct {
			SnapshotID string `xml:"snapshotId"`
		}{snap.ID})
	case "DescribeSnapshots":
		if form.Get("Owner.1") != "self" || form.Has("Owner.2") {
			fail(w, "InvalidParameterValue", "the fake knows only snapshots owned by self")
			return
		}
		var res struct {
			Snapshots []xmlSnapshot `xml:"snapshotSet>item"`
		}
		for _, snap := range f.snapshots {
			if matches(form, snap.Tags) {
				res.Snapshots = append(res.Snapshots, snap)
			}
		}
		reply(w, action, res)
	default:
		fail(w, "InvalidAction", "no action "+action)
	}
}

// settles is the state a machine in a passing state is in at its next describe.
var settles = map[string]string{"pending": "running", "stopping": "stopped", "shutting-down": "terminated"}

// matches reports whether tags pass every tag:<key> filter of a request.
func matches(form url.Values, tags []xmlTag) bool {
	for i := 1; form.Has(fmt.Sprintf("Filter.%d.Name", i)); i++ {
		key, ok := strings.CutPrefix(form.Get(fmt.Sprintf("Filter.%d.Name", i)), "tag:")
		if !ok || !slices.Contains(tags, xmlTag{key, form.Get(fmt.Sprintf("Filter.%d.Value.1", i))}) {
			return false
		}
	}
	return true
}

func reply(w http.ResponseWriter, action string, body any) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	_ = xml.NewEncoder(w).EncodeElement(body, xml.StartElement{Name: xml.Name{Space: ec2NS, Local: action + "Response"}})
}

func fail(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, "<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>req-1</RequestID></Response>",
		code, msg)
}

// tagSpecs reads a request's TagSpecification parameters: resource type →
// tag key → value.
func tagSpecs(form url.Values) map[string]map[string]string {
	out := map[string]map[string]string{}
	for i := 1; form.Has(fmt.Sprintf("TagSpecification.%d.ResourceType", i)); i++ {
		tags := map[string]string{}
		for j := 1; form.Has(fmt.Sprintf("TagSpecification.%d.Tag.%d.Key", i, j)); j++ {
			tags[form.Get(fmt.Sprintf("TagSpecification.%d.Tag.%d.Key", i, j))] = form.Get(fmt.Sprintf("TagSpecification.%d.Tag.%d.Value", i, j))
		}
		out[form.Get(fmt.Sprintf("TagSpecification.%d.ResourceType", i))] = tags
	}
	return out
}

// sent returns the requests made so far with action, or of every action
// but DescribeInstances if action is "".
func (f *fakeEC2) sent(action string) []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []url.Values
	for _, req := range f.requests {
		if a := req.Get("Action"); a == action || action == "" && a != "DescribeInstances" {
			out = append(out, req)
		}
	}
	return out
}

func (f *fakeEC2) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.machines)
}

func (f *fakeEC2) machine(id string) machine {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.machines[id]
}

// start runs a fake EC2 and returns it with a provider talking to it
// through the real client. Without AMIs, the business plan has its own
// and every other plan boots ami-default.
func start(t *testing.T, o ec2.Options) (*fakeEC2, *ec2.Provider) {
	t.Helper()
	f := &fakeEC2{machines: map[string]*machine{}, tokens: map[string]string{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := aws.Config{Region: "eu-west-1", BaseEndpoint: aws.String(srv.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "not-a-secret", "")}
	o.PollInterval = time.Millisecond
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.AMIs == nil {
		o.AMIs = map[string]string{"business": "ami-business"}
		o.DefaultAMI = "ami-default"
	}
	return f, ec2.New(cfg, o)
}

var spec = provision.LaunchSpec{InstanceID: "i-0123456789abcdef", EnrollmentToken: "spe_TOKENTOKENTOKEN",
	NATSURL: "tls://nats.example.com:4222", Customer: "acme", Plan: "starter", InstanceType: "t3.small",
	ClientToken: "job-0123456789abcdef-launch", HeartbeatInterval: 10 * time.Second, MetricsInterval: 30 * time.Second,
	CommandKey: "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="}

func TestLaunch(t *testing.T) {
	var logs bytes.Buffer
	f, p := start(t, ec2.Options{SubnetID: "subnet-1", SecurityGroupIDs: []string{"sg-1", "sg-2"},
		InstanceProfile: "stackpro-instance", KeyName: "ops", Log: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := context.Background()
	id, err := p.Launch(ctx, spec)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	// A retry, as after a crash before the id was saved, finds the same machine.
	again, err := p.Launch(ctx, spec)
	if err != nil || again != id {
		t.Fatalf("second Launch = %q, %v; want %q", again, err, id)
	}
	runs := f.sent("RunInstances")
	if len(runs) != 2 || f.count() != 1 {
		t.Fatalf("%d RunInstances made %d machines, want 2 making 1", len(runs), f.count())
	}
	req := runs[0]
	for key, want := range map[string]string{
		"ImageId": "ami-default", "InstanceType": "t3.small", "MinCount": "1", "MaxCount": "1",
		"ClientToken": spec.ClientToken, "SubnetId": "subnet-1", "SecurityGroupId.1": "sg-1", "SecurityGroupId.2": "sg-2",
		"IamInstanceProfile.Name": "stackpro-instance", "KeyName": "ops",
		"MetadataOptions.HttpTokens": "required", "MetadataOptions.HttpPutResponseHopLimit": "1",
		"MetadataOptions.HttpEndpoint": "enabled",
	} {
		if got := req.Get(key); got != want {
			t.Errorf("RunInstances %s = %q, want %q", key, got, want)
		}
	}
	if got := runs[1].Get("ClientToken"); got != spec.ClientToken {
		t.Errorf("retried ClientToken = %q, want %q", got, spec.ClientToken)
	}
	wantTags := map[string]string{"Name": "stackpro-" + spec.InstanceID, "Customer": "acme", "Plan": "starter",
		"ManagedBy": "StackPro", "StackProInstance": spec.InstanceID}
	for _, typ := range []string{"instance", "volume"} {
		if got := tagSpecs(req)[typ]; !maps.Equal(got, wantTags) {
			t.Errorf("%s tags = %v, want %v", typ, got, wantTags)
		}
	}

	boot := bootstrapOf(t, req.Get("UserData"))
	want := protocol.Bootstrap{InstanceID: spec.InstanceID, NATSURL: spec.NATSURL, EnrollmentToken: spec.EnrollmentToken,
		HeartbeatInterval: spec.HeartbeatInterval, MetricsInterval: spec.MetricsInterval, CommandKey: spec.CommandKey}
	if boot != want {
		t.Errorf("bootstrap file = %+v, want %+v", boot, want)
	}

	addr, err := p.WaitRunning(ctx, id)
	if err != nil || addr != "10.0.0.1" {
		t.Errorf("WaitRunning = %q, %v; want 10.0.0.1", addr, err)
	}
	if n := len(f.sent("DescribeInstances")); n < 2 {
		t.Errorf("WaitRunning described the machine %d times, want it to poll past pending", n)
	}
	if strings.Contains(logs.String(), spec.EnrollmentToken) || strings.Contains(logs.String(), req.Get("UserData")) {
		t.Errorf("the log holds the enrollment token or the user data:\n%s", logs.String())
	}
}

// bootstrapOf decodes user data the way cloud-init and then the agent do,
// checking the file's place and mode and that the agent is started.
func bootstrapOf(t *testing.T, userData string) protocol.Bootstrap {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(userData)
	if err != nil {
		t.Fatalf("user data is not base64: %v", err)
	}
	if !bytes.HasPrefix(raw, []byte("#cloud-config\n")) {
		t.Fatalf("user data does not start with #cloud-config:\n%s", raw)
	}
	var doc struct {
		WriteFiles []struct{ Path, Permissions, Content string } `yaml:"write_files"`
		RunCmd     [][]string                                    `yaml:"runcmd"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("user data: %v", err)
	}
	if len(doc.WriteFiles) != 1 || doc.WriteFiles[0].Path != "/etc/stackpro/agent.yaml" || doc.WriteFiles[0].Permissions != "0600" {
		t.Fatalf("write_files = %+v, want /etc/stackpro/agent.yaml with permissions 0600", doc.WriteFiles)
	}
	if !slices.ContainsFunc(doc.RunCmd, func(cmd []string) bool {
		return slices.Contains(cmd, "enable") && slices.Contains(cmd, "--now") && slices.Contains(cmd, "stackpro-agent.service")
	}) {
		t.Errorf("runcmd = %q, want stackpro-agent.service enabled and started", doc.RunCmd)
	}
	var boot protocol.Bootstrap
	if err := yaml.Unmarshal([]byte(doc.WriteFiles[0].Content), &boot); err != nil {
		t.Fatalf("bootstrap file: %v", err)
	}
	return boot
}

func TestLaunchOptions(t *testing.T) {
	f, p := start(t, ec2.Options{InstanceProfile: "arn:aws:iam::123456789012:instance-profile/stackpro", PublicAddress: true})
	ctx := context.Background()
	business := spec
	business.Plan, business.ClientToken = "business", strings.Repeat("x", 65)
	id, err := p.Launch(ctx, business)
	if err != nil {
		t.Fatal(err)
	}
	req := f.sent("RunInstances")[0]
	if got := req.Get("ImageId"); got != "ami-business" {
		t.Errorf("ImageId = %q, want the plan's ami-business", got)
	}
	if got := req.Get("IamInstanceProfile.Arn"); got != "arn:aws:iam::123456789012:instance-profile/stackpro" || req.Has("IamInstanceProfile.Name") {
		t.Errorf("IamInstanceProfile.Arn = %q, want the ARN (and no name)", got)
	}
	for _, key := range []string{"SubnetId", "KeyName"} {
		if req.Has(key) {
			t.Errorf("%s sent though not configured", key)
		}
	}
	if addr, err := p.WaitRunning(ctx, id); err != nil || addr != "203.0.113.1" {
		t.Errorf("WaitRunning = %q, %v; want the public 203.0.113.1", addr, err)
	}

	// Client tokens too long for EC2, or not ASCII, are hashed, the same way every time.
	for _, token := range []string{strings.Repeat("x", 65), strings.Repeat("x", 66), "job-ü-launch"} {
		s := spec
		s.ClientToken = token
		for range 2 {
			if _, err := p.Launch(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	var tokens []string
	for _, req := range f.sent("RunInstances") {
		tokens = append(tokens, req.Get("ClientToken"))
	}
	if tokens[0] != tokens[1] || tokens[1] != tokens[2] || tokens[3] != tokens[4] || tokens[5] != tokens[6] ||
		tokens[1] == tokens[3] || tokens[3] == tokens[5] {
		t.Errorf("client tokens = %q, want one stable token per launch", tokens)
	}
	for _, token := range tokens {
		if len(token) > 64 || strings.ContainsFunc(token, func(r rune) bool { return r > 127 }) {
			t.Errorf("client token %q: want at most 64 ASCII characters", token)
		}
	}
}

func TestLaunchNeedsAMI(t *testing.T) {
	f, p := start(t, ec2.Options{AMIs: map[string]string{"business": "ami-business"}})
	if _, err := p.Launch(context.Background(), spec); err == nil || !strings.Contains(err.Error(), `no AMI for plan "starter"`) {
		t.Errorf("Launch without an AMI = %v, want an error", err)
	}
	if n := len(f.sent("")); n != 0 {
		t.Errorf("%d requests sent, want none", n)
	}
}

// A retry whose parameters changed (here the plan's AMI) gets
// IdempotentParameterMismatch from EC2; the machine the first try started
// is kept rather than a second launched.
func TestLaunchParameterMismatch(t *testing.T) {
	f, p := start(t, ec2.Options{})
	ctx := context.Background()
	id, err := p.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	changed := spec
	changed.Plan = "business"
	if got, err := p.Launch(ctx, changed); err != nil || got != id {
		t.Errorf("Launch with changed parameters = %q, %v; want the first machine %q", got, err, id)
	}
	if f.count() != 1 {
		t.Errorf("%d machines, want 1", f.count())
	}
	if err := p.Terminate(ctx, spec.InstanceID, id); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Launch(ctx, changed); err == nil || !strings.Contains(err.Error(), "other parameters") {
		t.Errorf("Launch with changed parameters after the machine is gone = %v, want an error saying why", err)
	}
}

func TestResize(t *testing.T) {
	f, p := start(t, ec2.Options{})
	ctx := context.Background()
	id, err := p.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitRunning(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := p.Resize(ctx, id, "t3.large"); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	if _, err := p.WaitRunning(ctx, id); err != nil { // the resize job's next step
		t.Fatal(err)
	}
	var actions []string
	for _, req := range f.sent("")[1:] {
		actions = append(actions, req.Get("Action"))
	}
	if want := []string{"StopInstances", "ModifyInstanceAttribute", "StartInstances"}; !slices.Equal(actions, want) {
		t.Errorf("Resize sent %q, want %q", actions, want)
	}
	if m := f.machine(id); m.Type != "t3.large" || m.State != "running" {
		t.Errorf("after Resize: %s, %s; want t3.large, running", m.Type, m.State)
	}
	if err := p.Resize(ctx, id, "t3.large"); err != nil || len(f.sent("")) != 4 {
		t.Errorf("Resize to the type it has = %v after %d more requests, want nil and none", err, len(f.sent(""))-4)
	}
}

func TestTerminate(t *testing.T) {
	f, p := start(t, ec2.Options{})
	ctx := context.Background()
	id, err := p.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Terminate(ctx, spec.InstanceID, id); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	if m := f.machine(id); m.State != "terminated" {
		t.Errorf("after Terminate the machine is %s, want terminated", m.State)
	}
	for _, pid := range []string{id, "i-0000000000000dead", ""} { // again, unknown, never launched
		if err := p.Terminate(ctx, spec.InstanceID, pid); err != nil {
			t.Errorf("Terminate(%q) = %v, want nil", pid, err)
		}
	}
}

// Snapshot takes one snapshot per volume and token: a retry with the
// same token, as after a crash, gets the same snapshots back.
func TestSnapshot(t *testing.T) {
	f, p := start(t, ec2.Options{})
	ctx := context.Background()
	id, err := p.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		ids, err := p.Snapshot(ctx, id, "job-1")
		if err != nil || !slices.Equal(ids, []string{"snap-1", "snap-2"}) {
			t.Fatalf("Snapshot = %q, %v; want snap-1 and snap-2", ids, err)
		}
	}
	wantTags := map[string]string{"Name": "stackpro-" + spec.InstanceID, "ManagedBy": "StackPro",
		"StackProInstance": spec.InstanceID, "StackProToken": "job-1"}
	var volumes []string
	for _, req := range f.sent("CreateSnapshot") {
		volumes = append(volumes, req.Get("VolumeId"))
		if got := tagSpecs(req)["snapshot"]; !maps.Equal(got, wantTags) {
			t.Errorf("snapshot tags = %v, want %v", got, wantTags)
		}
	}
	if !slices.Equal(volumes, []string{"vol-1a", "vol-1b"}) {
		t.Errorf("snapshots of %q, want vol-1a and vol-1b once each", volumes)
	}
	for _, req := range f.sent("DescribeSnapshots") {
		if req.Get("Owner.1") != "self" || req.Get("Filter.1.Name") != "tag:StackProToken" || req.Get("Filter.1.Value.1") != "job-1" {
			t.Errorf("DescribeSnapshots %v: want our snapshots with token job-1", req)
		}
	}

	// Another token is another set.
	if ids, err := p.Snapshot(ctx, id, "job-2"); err != nil || !slices.Equal(ids, []string{"snap-3", "snap-4"}) {
		t.Errorf("Snapshot with another token = %q, %v; want snap-3 and snap-4", ids, err)
	}
	if ids, err := p.Snapshot(ctx, "i-0000000000000dead", "job-3"); err != nil || len(ids) != 0 {
		t.Errorf("Snapshot of an unknown machine = %q, %v; want none and nil", ids, err)
	}
}
