package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeFile writes content to a file in a fresh temp dir and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stackpro.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("os.WriteFile: %v", err)
	}
	return path
}

// lines splits a joined error into its messages; nil has none.
func lines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

// wantErrContaining fails unless err mentions every one of want.
func wantErrContaining(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want an error mentioning %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("err = %q, want it to mention %q", err, w)
		}
	}
}

// Default() is where serve starts; dev mode adds Dev and one demo instance.
func TestDefaultsValidate(t *testing.T) {
	dev := Default()
	dev.Dev, dev.DemoInstances = true, 1
	run := Default()
	for name, cfg := range map[string]Config{"dev": dev, "run": run} {
		t.Run(name, func(t *testing.T) {
			if err := cfg.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestReadFileOverridesDefaults(t *testing.T) {
	path := writeFile(t, `
data_dir: /srv/stackpro
dev: true
demo_instances: 3
log:
  level: debug
http:
  addr: 0.0.0.0:9090
nats:
  advertise_url: tls://nats.example.com:4222
fleet:
  stale_after: 1m
  offline_after: 5m
`)
	got := Default()
	if err := got.ReadFile(path); err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	want := Default()
	want.DataDir = "/srv/stackpro"
	want.Dev = true
	want.DemoInstances = 3
	want.Log.Level = "debug"
	want.HTTP.Addr = "0.0.0.0:9090"
	want.NATS.AdvertiseURL = "tls://nats.example.com:4222"
	want.Fleet.StaleAfter = time.Minute
	want.Fleet.OfflineAfter = 5 * time.Minute
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after ReadFile:\n got %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
}

func TestReadFileEmptyKeepsDefaults(t *testing.T) {
	got := Default()
	if err := got.ReadFile(writeFile(t, "")); err != nil {
		t.Fatalf("ReadFile of an empty file: %v", err)
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("after ReadFile:\n got %+v\nwant %+v", got, want)
	}
}

func TestReadFileErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string // each must appear in the error
	}{
		{"unknown top-level key", "data_dir: x\nbogus: 1\n", []string{"bogus"}},
		{"unknown nested key", "http: {adress: x}\n", []string{"adress"}},
		{"unknown key deep in a section", "fleet:\n  stale_after: 1m\n  stael_after: 2m\n", []string{"stael_after", "line 3"}},
		{"malformed", "http: [unclosed\n", []string{"line 1"}},
		{"wrong type", "dev: maybe\n", []string{"maybe"}},
		{"bad duration", "fleet: {stale_after: soon}\n", []string{"soon"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.content)
			cfg := Default()
			err := cfg.ReadFile(path)
			wantErrContaining(t, err, append(tt.want, "config: "+path)...)
		})
	}
}

func TestReadFileMissing(t *testing.T) {
	cfg := Default()
	err := cfg.ReadFile(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile of a missing file = %v, want fs.ErrNotExist", err)
	}
}

func TestLoadEnvOverridesFile(t *testing.T) {
	cfg := Default()
	if err := cfg.ReadFile(writeFile(t, "http: {addr: 127.0.0.1:9000}\ndev: false\n")); err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	err := cfg.LoadEnv([]string{
		"PATH=/usr/bin",
		"STACKPRO_HTTP_ADDR=0.0.0.0:8443",
		"STACKPRO_DEV=true",
		"STACKPRO_DEMO_INSTANCES=4",
		"STACKPRO_FLEET_STALE_AFTER=45s",
		"STACKPRO_NATS_ADVERTISE_URL=nats://cp.example.com:4222",
		"STACKPRO_LOG_FORMAT=json",
		"STACKPRO_AGENT_INSTANCE_ID=i-ignored",      // the agent's, not ours
		"STACKPRO_AGENT_NO_SUCH_THING=also-ignored", // even unknown ones
	})
	if err != nil {
		t.Fatalf("LoadEnv: %v", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"http.addr", cfg.HTTP.Addr, "0.0.0.0:8443"},
		{"dev", cfg.Dev, true},
		{"demo_instances", cfg.DemoInstances, 4},
		{"fleet.stale_after", cfg.Fleet.StaleAfter, 45 * time.Second},
		{"fleet.offline_after", cfg.Fleet.OfflineAfter, 2 * time.Minute}, // untouched default
		{"nats.advertise_url", cfg.NATS.AdvertiseURL, "nats://cp.example.com:4222"},
		{"log.format", cfg.Log.Format, "json"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestLoadEnvReportsEveryProblem(t *testing.T) {
	cfg := Default()
	err := cfg.LoadEnv([]string{
		"STACKPRO_FOO=1",
		"STACKPRO_DEV=maybe",
		"STACKPRO_HTTP_ADDR=0.0.0.0:1", // fine, and still applied
		"STACKPRO_DEMO_INSTANCES=two",
		"STACKPRO_FLEET_STALE_AFTER=10",
	})
	want := []string{
		"config: unknown environment variable STACKPRO_FOO",
		`config: STACKPRO_DEV: want true or false, got "maybe"`,
		`config: STACKPRO_DEMO_INSTANCES: want a whole number, got "two"`,
		`config: STACKPRO_FLEET_STALE_AFTER: want a duration such as 10s, got "10"`,
	}
	if got := lines(err); !slices.Equal(got, want) {
		t.Errorf("LoadEnv errors:\n got %q\nwant %q", got, want)
	}
	if cfg.HTTP.Addr != "0.0.0.0:1" {
		t.Errorf("http.addr = %q, want the good variable applied despite the bad ones", cfg.HTTP.Addr)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := Default()
	cfg.DataDir = ""
	cfg.DemoInstances = -1
	cfg.Log.Level = "loud"
	cfg.Log.Format = "xml"
	cfg.HTTP.Addr = "localhost"
	cfg.NATS.Listen = "127.0.0.1:99999"
	cfg.NATS.AdvertiseURL = "http://nats.example.com"
	cfg.HTTP.CORSOrigins = []string{"https://app.example.com", "app.example.com", "https://app.example.com/path"}
	cfg.Fleet.HeartbeatInterval = 0
	cfg.Fleet.MetricsInterval = -time.Second
	cfg.Enrollment.TokenTTL = 0
	cfg.Fleet.StaleAfter = 0
	cfg.Fleet.OfflineAfter = 0

	// The order is the order of the checks, so messages are stable.
	want := []string{
		"data_dir is required",
		"demo_instances must not be negative, got -1",
		`log.level must be debug, info, warn or error, got "loud"`,
		`log.format must be text or json, got "xml"`,
		`http.addr must be host:port, got "localhost"`,
		`nats.listen has an invalid port in "127.0.0.1:99999"`,
		`http.cors_origins: "app.example.com" is not an origin like https://app.example.com`,
		`http.cors_origins: "https://app.example.com/path" is not an origin like https://app.example.com`,
		`nats.advertise_url must start with nats:// or tls://, got "http://nats.example.com"`,
		"fleet.heartbeat_interval must be positive, got 0s",
		"fleet.metrics_interval must be positive, got -1s",
		"enrollment.token_ttl must be positive, got 0s",
		"fleet.stale_after (0s) must be longer than fleet.heartbeat_interval (0s)",
		"fleet.offline_after (0s) must be longer than fleet.stale_after (0s)",
	}
	for range 3 { // the same every time
		if got := lines(cfg.Validate()); !slices.Equal(got, want) {
			t.Fatalf("Validate():\n got %q\nwant %q", got, want)
		}
	}
}

func TestValidateSingleProblems(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"demo instances outside dev mode", func(c *Config) { c.Dev = false; c.DemoInstances = 2 },
			"demo_instances needs dev mode"},
		{"stale not after heartbeat", func(c *Config) { c.Fleet.StaleAfter = c.Fleet.HeartbeatInterval },
			"fleet.stale_after (10s) must be longer than fleet.heartbeat_interval (10s)"},
		{"offline not after stale", func(c *Config) { c.Fleet.OfflineAfter = c.Fleet.StaleAfter },
			"fleet.offline_after (35s) must be longer than fleet.stale_after (35s)"},
		{"non-numeric port", func(c *Config) { c.HTTP.Addr = "127.0.0.1:http" },
			`http.addr has an invalid port in "127.0.0.1:http"`},
		{"refresh shorter than access", func(c *Config) { c.Auth.RefreshTTL = time.Minute },
			"auth: access_ttl must be positive, refresh_ttl and key_rotation longer than it"},
		{"no attempts", func(c *Config) { c.Auth.PerAccount.Attempts = 0 },
			"auth.per_account: attempts must be at least 1 and window positive, got 0 in 15m0s"},
		{"bad sender", func(c *Config) { c.Mail.From = "stackpro" }, `mail.from must be an address such as StackPro <no-reply@example.com>, got "stackpro"`},
		{"unknown starttls", func(c *Config) { c.Mail.SMTP.StartTLS = "maybe" },
			`mail.smtp.starttls must be required, opportunistic or none, got "maybe"`},
		{"user without password", func(c *Config) { c.Mail.SMTP.Username = "stackpro" },
			"mail.smtp.username and mail.smtp.password go together"},
		{"public url without scheme", func(c *Config) { c.PublicURL = "app.example.com" },
			`public_url must be an http(s) URL, got "app.example.com"`},
		{"unknown billing provider", func(c *Config) { c.Billing.Provider = "paypal" },
			`billing.provider must be local or stripe, got "paypal"`},
		{"stripe without secrets", func(c *Config) { stripePrices(c); c.Billing.WebhookSecret = "" },
			"billing provider stripe needs billing.secret_key and billing.webhook_secret (secret references)"},
		{"stripe plan without price", func(c *Config) {
			stripePrices(c)
			c.Plans["business"] = Plan{Stack: "starter", InstanceType: "t3.medium"}
		},
			"plans.business: billing provider stripe needs its price_id"},
		{"two plans one price", func(c *Config) {
			stripePrices(c)
			p := c.Plans["starter"]
			p.PriceID = "price_business"
			c.Plans["starter"] = p
		}, "plans.starter: price_id price_business is plans.business's too"},
		{"bad backup schedule", func(c *Config) {
			c.Plans["starter"] = Plan{Stack: "starter", InstanceType: "t3.small", BackupSchedule: "daily"}
		},
			`plans.starter.backup_schedule must be a cron expression of five fields or @hourly, @daily, @weekly, got "daily": expected exactly 5 fields, found 1: [daily]`},
		{"negative quota", func(c *Config) {
			c.Plans["starter"] = Plan{Stack: "starter", InstanceType: "t3.small", Quotas: Quotas{SMS: -1}}
		}, "plans.starter: monthly_price and quotas must not be negative"},
		{"bad currency", func(c *Config) { c.Billing.Currency = "USD" },
			`billing.currency must be a three-letter ISO code in lower case, got "USD"`},
		{"bad success url", func(c *Config) { c.Billing.SuccessURL = "/thanks" },
			`billing.success_url must be an http:// or https:// URL, got "/thanks"`},
		{"negative grace", func(c *Config) { c.Billing.GracePeriod = -time.Hour },
			"billing.grace_period must not be negative, got -1h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Default()
			cfg.Dev = true
			tt.modify(&cfg)
			if got := lines(cfg.Validate()); !slices.Equal(got, []string{tt.want}) {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}

// stripePrices switches c to Stripe billing with a price for every plan.
func stripePrices(c *Config) {
	c.Billing.Provider, c.Billing.SecretKey, c.Billing.WebhookSecret = "stripe", "env:STRIPE_KEY", "env:STRIPE_WHSEC"
	for name, p := range c.Plans {
		p.PriceID = "price_" + name
		c.Plans[name] = p
	}
}

func TestStripeBillingValidates(t *testing.T) {
	cfg := Default()
	stripePrices(&cfg)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestNATSURL(t *testing.T) {
	if got, want := Default().NATSURL(), "nats://127.0.0.1:4222"; got != want {
		t.Errorf("Default().NATSURL() = %q, want %q", got, want)
	}
	tests := []struct {
		name   string
		listen string
		adv    string
		want   string
	}{
		{"from listen", "0.0.0.0:14222", "", "nats://0.0.0.0:14222"},
		{"advertise_url wins", "0.0.0.0:4222", "tls://nats.example.com:4222", "tls://nats.example.com:4222"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Default()
			cfg.NATS = NATS{Listen: tt.listen, AdvertiseURL: tt.adv}
			if got := cfg.NATSURL(); got != tt.want {
				t.Errorf("NATSURL() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAWSFromFileAndEnv(t *testing.T) {
	cfg := Default()
	err := cfg.ReadFile(writeFile(t, `
provider: ec2
dns: route53
enrollment:
  key: aws-sm:stackpro/enrollment-key
plans:
  business: {stack: starter, instance_type: t3.medium, ami: ami-business}
aws:
  region: eu-west-1
  endpoint: http://127.0.0.1:4566
  ami: ami-default
  subnet_id: subnet-1
  security_group_ids: [sg-1, sg-2]
  instance_profile: stackpro-instance
  hosted_zone_id: Z0123456789ABC
  poll_interval: 5s
`))
	if err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	want := AWS{Region: "eu-west-1", Endpoint: "http://127.0.0.1:4566", AMI: "ami-default", SubnetID: "subnet-1",
		SecurityGroupIDs: []string{"sg-1", "sg-2"}, InstanceProfile: "stackpro-instance", HostedZoneID: "Z0123456789ABC",
		PollInterval: 5 * time.Second}
	if !reflect.DeepEqual(cfg.AWS, want) {
		t.Errorf("aws = %+v, want %+v", cfg.AWS, want)
	}
	if cfg.Provider != "ec2" || cfg.DNS != "route53" || cfg.Plans["business"].AMI != "ami-business" ||
		cfg.Enrollment.Key != "aws-sm:stackpro/enrollment-key" {
		t.Errorf("provider %q, dns %q, business ami %q, enrollment.key %q", cfg.Provider, cfg.DNS, cfg.Plans["business"].AMI, cfg.Enrollment.Key)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}

	// A list in the environment is comma-separated.
	if err := cfg.LoadEnv([]string{"STACKPRO_AWS_SECURITY_GROUP_IDS=sg-a, sg-b,", "STACKPRO_ENROLLMENT_KEY=env:KEY"}); err != nil {
		t.Fatalf("LoadEnv: %v", err)
	}
	if want := []string{"sg-a", "sg-b"}; !slices.Equal(cfg.AWS.SecurityGroupIDs, want) {
		t.Errorf("aws.security_group_ids = %q, want %q", cfg.AWS.SecurityGroupIDs, want)
	}
	if cfg.Enrollment.Key != "env:KEY" {
		t.Errorf("enrollment.key = %q, want env:KEY", cfg.Enrollment.Key)
	}
}

func TestValidateProviderAndDNS(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   []string
	}{
		{"ec2 with nothing it needs", func(c *Config) { c.Provider = "ec2" }, []string{
			"provider ec2 needs aws.subnet_id",
			"plans.business: provider ec2 needs its ami, or aws.ami",
			"plans.enterprise: provider ec2 needs its ami, or aws.ami",
			"plans.starter: provider ec2 needs its ami, or aws.ami",
			"aws.region is required with provider ec2 or dns route53",
		}},
		{"ec2 with a default ami", func(c *Config) {
			c.Provider, c.AWS.Region, c.AWS.SubnetID, c.AWS.AMI = "ec2", "eu-west-1", "subnet-1", "ami-default"
		}, nil},
		{"ec2 with one plan's ami", func(c *Config) {
			c.Provider, c.AWS.Region, c.AWS.SubnetID = "ec2", "eu-west-1", "subnet-1"
			c.Plans = map[string]Plan{"starter": {Stack: "starter", InstanceType: "t3.small", AMI: "ami-1"},
				"business": {Stack: "starter", InstanceType: "t3.medium"}}
		}, []string{"plans.business: provider ec2 needs its ami, or aws.ami"}},
		{"route53 with nothing it needs", func(c *Config) { c.DNS = "route53" }, []string{
			"dns route53 needs aws.hosted_zone_id",
			"aws.region is required with provider ec2 or dns route53",
		}},
		{"unknown names", func(c *Config) { c.Provider, c.DNS = "gce", "bind" }, []string{
			`provider must be local or ec2, got "gce"`,
			`dns must be store or route53, got "bind"`,
		}},
		{"bad endpoint and poll interval", func(c *Config) { c.AWS.Endpoint, c.AWS.PollInterval = "localhost:4566", 0 }, []string{
			"aws.poll_interval must be positive, got 0s",
			`aws.endpoint must be an http:// or https:// URL, got "localhost:4566"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Default()
			tt.modify(&cfg)
			if got := lines(cfg.Validate()); !slices.Equal(got, tt.want) {
				t.Errorf("Validate():\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}
