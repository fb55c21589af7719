// Package config is the control plane's configuration: defaults, then a YAML
// file, then STACKPRO_* environment variables, then command-line flags, each
// layer overriding the one before. Unknown keys are errors at every layer,
// and Validate reports every problem at once.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/mail"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"gopkg.in/yaml.v3"
)

// Config is everything the control plane reads at start-up. The yaml tags
// are the file keys; the environment variable of a key is STACKPRO_ and the
// key path in upper case with dots as underscores (http.addr → STACKPRO_HTTP_ADDR).
// A list is comma-separated there (STACKPRO_AWS_SECURITY_GROUP_IDS=sg-1,sg-2).
type Config struct {
	// DataDir holds the store, JetStream and local instances.
	DataDir string `yaml:"data_dir"`
	// Dev turns on the embedded-default conveniences: the data dir is
	// created if missing and demo instances are launched.
	Dev bool `yaml:"dev"`
	// DemoInstances is how many local instances dev mode keeps launched
	// (1 unless set).
	DemoInstances int        `yaml:"demo_instances"`
	Log           Log        `yaml:"log"`
	HTTP          HTTP       `yaml:"http"`
	NATS          NATS       `yaml:"nats"`
	Fleet         Fleet      `yaml:"fleet"`
	Enrollment    Enrollment `yaml:"enrollment"`
	Local         Local      `yaml:"local"`
	Stacks        Stacks     `yaml:"stacks"`
	// Provider runs instances' machines: local (agent processes on this
	// host) or ec2.
	Provider string `yaml:"provider"`
	// DNS keeps instances' A records: store (in the control plane's own
	// store) or route53.
	DNS string `yaml:"dns"`
	AWS AWS    `yaml:"aws"`
	// Zone is the DNS zone instances are named in: <subdomain>.<zone>.
	Zone   string          `yaml:"zone"`
	Plans  map[string]Plan `yaml:"plans"`
	Jobs   Jobs            `yaml:"jobs"`
	Faults Faults          `yaml:"faults"`
	// PublicURL is where people reach the API and the console; links in
	// emails start with it. By default http://<http.addr>.
	PublicURL string  `yaml:"public_url"`
	Auth      Auth    `yaml:"auth"`
	Mail      Mail    `yaml:"mail"`
	Billing   Billing `yaml:"billing"`
}

// Billing configures subscriptions: Stripe, or the local stand-in that
// completes every checkout at once (the embedded default).
type Billing struct {
	// Provider is local or stripe.
	Provider string `yaml:"provider"`
	// SecretKey and WebhookSecret are secret references (env:NAME,
	// file:/path or aws-sm:<id>) to Stripe's API key and the webhook
	// endpoint's signing secret (whsec_...).
	SecretKey     string `yaml:"secret_key"`
	WebhookSecret string `yaml:"webhook_secret"`
	// APIBase replaces Stripe's API URL (stripe-mock's, in tests).
	APIBase string `yaml:"api_base"`
	// SuccessURL and CancelURL are where checkout sends the customer back;
	// PortalReturnURL is where the billing portal does. By default pages
	// under public_url.
	SuccessURL      string `yaml:"success_url"`
	CancelURL       string `yaml:"cancel_url"`
	PortalReturnURL string `yaml:"portal_return_url"`
	// Currency is the three-letter ISO code, lower case, of plan prices.
	Currency string `yaml:"currency"`
	// GracePeriod is how long a canceled subscription's instance stays
	// suspended, data kept, before it is terminated.
	GracePeriod time.Duration `yaml:"grace_period"`
}

// Auth configures accounts and sign-in.
type Auth struct {
	// AccessTTL is how long an access token (JWT) is good for.
	AccessTTL time.Duration `yaml:"access_ttl"`
	// RefreshTTL is how long a session lasts without being refreshed.
	RefreshTTL time.Duration `yaml:"refresh_ttl"`
	// KeyRotation is how often a new key starts signing access tokens.
	KeyRotation time.Duration `yaml:"key_rotation"`
	// Limits bound sign-up, login, reset and resend attempts.
	PerIP      Limit `yaml:"per_ip"`
	PerAccount Limit `yaml:"per_account"`
}

// Limit is a number of attempts per window.
type Limit struct {
	Attempts int           `yaml:"attempts"`
	Window   time.Duration `yaml:"window"`
}

// Mail configures transactional email: an SMTP server when smtp.addr is
// set, else one file per message in <data_dir>/mail.
type Mail struct {
	From string `yaml:"from"`
	SMTP SMTP   `yaml:"smtp"`
}

// SMTP is the mail server.
type SMTP struct {
	Addr     string `yaml:"addr"`
	Username string `yaml:"username"`
	// Password is a secret reference: env:NAME, file:/path or aws-sm:<id>.
	Password string `yaml:"password"`
	// StartTLS is required (the default), opportunistic or none.
	StartTLS string `yaml:"starttls"`
}

// Stacks configures the stacks instances run.
type Stacks struct {
	// Image is the image of the stand-in services; make run builds it.
	Image string `yaml:"image"`
}

// Plan is what a plan gives its instances.
type Plan struct {
	// Stack names the template under deploy/stacks/.
	Stack        string `yaml:"stack"`
	InstanceType string `yaml:"instance_type"`
	// AMI is the image the plan's EC2 machines boot; aws.ami if empty.
	AMI string `yaml:"ami"`
	// PriceID is the plan's monthly Stripe price; billing.provider stripe
	// needs one per plan.
	PriceID string `yaml:"price_id"`
	// MonthlyPrice is the plan's price a month in the currency's minor
	// unit (cents): what local billing charges, and what MRR counts when
	// Stripe does not say.
	MonthlyPrice int `yaml:"monthly_price"`
	// BackupSchedule is when the plan's instances are backed up: a cron
	// expression of five fields, or @hourly, @daily, @weekly; @daily if
	// empty.
	BackupSchedule string `yaml:"backup_schedule"`
	// Quotas bound the messages an instance may relay a month.
	Quotas Quotas `yaml:"quotas"`
}

// Quotas are messages a month, by channel.
type Quotas struct {
	SMS      int `yaml:"sms"`
	WhatsApp int `yaml:"whatsapp"`
	Email    int `yaml:"email"`
}

// AWS configures the ec2 provider, the route53 DNS and aws-sm: secrets.
// Credentials come the SDK's usual way: environment, shared files, or the
// machine's role.
type AWS struct {
	Region string `yaml:"region"`
	// Endpoint replaces the base URL of every AWS client: a compatible
	// service's, or a test's.
	Endpoint string `yaml:"endpoint"`
	// AMI is the image of plans that name none.
	AMI              string   `yaml:"ami"`
	SubnetID         string   `yaml:"subnet_id"`
	SecurityGroupIDs []string `yaml:"security_group_ids"`
	// InstanceProfile is the IAM instance profile machines get, by name or ARN.
	InstanceProfile string `yaml:"instance_profile"`
	// KeyName is the EC2 key pair for SSH to machines; none if empty.
	KeyName string `yaml:"key_name"`
	// PublicAddress names instances by their machines' public IP addresses
	// instead of their private ones.
	PublicAddress bool   `yaml:"public_address"`
	HostedZoneID  string `yaml:"hosted_zone_id"`
	// PollInterval is how often a wait for a machine or a DNS change asks AWS.
	PollInterval time.Duration `yaml:"poll_interval"`
}

// Jobs configures the provisioning jobs.
type Jobs struct {
	// Workers bounds how many jobs run a step at once; steps that only
	// wait (for a machine, an enrollment, a healthy stack) hold no worker.
	Workers int `yaml:"workers"`
	// Attempts a failing step gets before the job compensates.
	Attempts  int           `yaml:"attempts"`
	RetryBase time.Duration `yaml:"retry_base"`
	RetryMax  time.Duration `yaml:"retry_max"`
	// WaitTimeout bounds one wait for a machine, an enrollment or a healthy stack.
	WaitTimeout time.Duration `yaml:"wait_timeout"`
}

// Faults inject failures into jobs, for the crash and failure tests only.
type Faults struct {
	// CrashAfterStep kills the control plane right after this step is saved.
	CrashAfterStep string `yaml:"crash_after_step"`
	// FailStep makes this step fail every time.
	FailStep string `yaml:"fail_step"`
	// FailFor limits fail_step to customers whose id starts with it.
	FailFor string `yaml:"fail_for"`
}

// Log configures the control plane's log/slog output.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// HTTP configures dashboard-api's listener.
type HTTP struct {
	Addr string `yaml:"addr"`
	// CORSOrigins are the web frontends' origins (https://app.example.com)
	// allowed to call the API from a browser.
	CORSOrigins []string `yaml:"cors_origins"`
}

// NATS configures the embedded broker.
type NATS struct {
	// Listen is host:port for agent connections.
	Listen string `yaml:"listen"`
	// AdvertiseURL is the URL agents are told to connect to; by default
	// nats://<listen>.
	AdvertiseURL string `yaml:"advertise_url"`
}

// Fleet sets how liveness is derived and how often agents report.
type Fleet struct {
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	MetricsInterval   time.Duration `yaml:"metrics_interval"`
	// StaleAfter without a heartbeat an instance is stale; OfflineAfter, offline.
	StaleAfter   time.Duration `yaml:"stale_after"`
	OfflineAfter time.Duration `yaml:"offline_after"`
}

// Enrollment configures one-time enrollment tokens.
type Enrollment struct {
	TokenTTL time.Duration `yaml:"token_ttl"`
	// Key is a secret reference (env:NAME, file:/path or aws-sm:<secret id>)
	// to the key tokens are derived from, at least 32 bytes. If empty,
	// <data_dir>/enrollment.key is used, and created on first start.
	Key string `yaml:"key"`
}

// Local configures the local provider, which runs agents as processes on this host.
type Local struct {
	// AgentBin is the stackpro-agent binary; by default the one beside
	// the control plane's own binary.
	AgentBin string `yaml:"agent_bin"`
}

// Default is the configuration before any file, environment or flag.
func Default() Config {
	return Config{
		DataDir: "./data",
		Log:     Log{Level: "info", Format: "text"},
		HTTP:    HTTP{Addr: "127.0.0.1:8080"},
		NATS:    NATS{Listen: "127.0.0.1:4222"},
		Fleet: Fleet{
			HeartbeatInterval: 10 * time.Second,
			MetricsInterval:   30 * time.Second,
			StaleAfter:        35 * time.Second,
			OfflineAfter:      2 * time.Minute,
		},
		Enrollment: Enrollment{TokenTTL: 30 * time.Minute},
		Stacks:     Stacks{Image: "stackpro/demo:dev"},
		Provider:   "local",
		DNS:        "store",
		AWS:        AWS{PollInterval: 15 * time.Second},
		Zone:       "stackpro.localhost",
		Plans: map[string]Plan{
			"starter": {Stack: "starter", InstanceType: "t3.small", MonthlyPrice: 2900, BackupSchedule: "@daily",
				Quotas: Quotas{SMS: 500, WhatsApp: 500, Email: 10000}},
			"business": {Stack: "starter", InstanceType: "t3.medium", MonthlyPrice: 7900, BackupSchedule: "0 */6 * * *",
				Quotas: Quotas{SMS: 2500, WhatsApp: 2500, Email: 50000}},
			"enterprise": {Stack: "starter", InstanceType: "t3.large", MonthlyPrice: 19900, BackupSchedule: "@hourly",
				Quotas: Quotas{SMS: 10000, WhatsApp: 10000, Email: 250000}},
		},
		Jobs: Jobs{Workers: 16, Attempts: 5, RetryBase: time.Second, RetryMax: 30 * time.Second, WaitTimeout: 10 * time.Minute},
		Auth: Auth{AccessTTL: 15 * time.Minute, RefreshTTL: 30 * 24 * time.Hour, KeyRotation: 30 * 24 * time.Hour,
			PerIP: Limit{30, 5 * time.Minute}, PerAccount: Limit{10, 15 * time.Minute}},
		Mail:    Mail{From: "StackPro <no-reply@stackpro.localhost>", SMTP: SMTP{StartTLS: "required"}},
		Billing: Billing{Provider: "local", Currency: "usd", GracePeriod: 14 * 24 * time.Hour},
	}
}

// LoadFile decodes YAML from r over c. Unknown keys are errors.
func (c *Config) LoadFile(r io.Reader, name string) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("config: reading %s: %w", name, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config: %s: %w", name, err)
	}
	return nil
}

// EnvPrefix starts every control plane environment variable.
const EnvPrefix = "STACKPRO_"

// agentEnvPrefix belongs to the agent; the control plane leaves it alone so
// both can share an environment.
const agentEnvPrefix = "STACKPRO_AGENT_"

// LoadEnv applies STACKPRO_* variables from environ (as os.Environ gives
// them). A STACKPRO_ variable that names no key is an error, so a typo
// does not pass silently. Every problem is reported at once.
func (c *Config) LoadEnv(environ []string) error {
	fields := map[string]reflect.Value{}
	walk(reflect.ValueOf(c).Elem(), "", func(key string, v reflect.Value) {
		fields[EnvPrefix+strings.ToUpper(strings.ReplaceAll(key, ".", "_"))] = v
	})
	var errs []error
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) || strings.HasPrefix(name, agentEnvPrefix) {
			continue
		}
		field, ok := fields[name]
		if !ok {
			errs = append(errs, fmt.Errorf("config: unknown environment variable %s", name))
			continue
		}
		if err := set(field, value); err != nil {
			errs = append(errs, fmt.Errorf("config: %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// walk calls fn for every leaf field of v with its dotted yaml key.
func walk(v reflect.Value, prefix string, fn func(key string, v reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		key := prefix + t.Field(i).Tag.Get("yaml")
		if f := v.Field(i); f.Kind() == reflect.Struct {
			walk(f, key+".", fn)
		} else {
			fn(key, f)
		}
	}
}

// set parses s into the leaf field v.
func set(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case string:
		v.SetString(s)
	case bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("want true or false, got %q", s)
		}
		v.SetBool(b)
	case int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("want a whole number, got %q", s)
		}
		v.SetInt(int64(n))
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("want a duration such as 10s, got %q", s)
		}
		v.SetInt(int64(d))
	case []string:
		var items []string
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				items = append(items, item)
			}
		}
		v.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func (p Plan) validate(key string) []error {
	var errs []error
	if p.Stack == "" || p.InstanceType == "" {
		errs = append(errs, fmt.Errorf("%s: stack and instance_type are required", key))
	}
	if p.MonthlyPrice < 0 || p.Quotas.SMS < 0 || p.Quotas.WhatsApp < 0 || p.Quotas.Email < 0 {
		errs = append(errs, fmt.Errorf("%s: monthly_price and quotas must not be negative", key))
	}
	if _, err := cronParser.Parse(p.BackupSchedule); p.BackupSchedule != "" && err != nil {
		errs = append(errs, fmt.Errorf("%s.backup_schedule must be a cron expression of five fields or @hourly, @daily, @weekly, got %q: %w", key, p.BackupSchedule, err))
	}
	return errs
}

var currencyPattern = regexp.MustCompile(`^[a-z]{3}$`)

func (b Billing) validate(plans map[string]Plan) []error {
	var errs []error
	switch b.Provider {
	case "local":
	case "stripe":
		if b.SecretKey == "" || b.WebhookSecret == "" {
			errs = append(errs, errors.New("billing provider stripe needs billing.secret_key and billing.webhook_secret (secret references)"))
		}
		prices := map[string]string{}
		for _, name := range slices.Sorted(maps.Keys(plans)) {
			id := plans[name].PriceID
			if id == "" {
				errs = append(errs, fmt.Errorf("plans.%s: billing provider stripe needs its price_id", name))
			} else if other, dup := prices[id]; dup {
				errs = append(errs, fmt.Errorf("plans.%s: price_id %s is plans.%s's too", name, id, other))
			}
			prices[id] = name
		}
	default:
		errs = append(errs, fmt.Errorf("billing.provider must be local or stripe, got %q", b.Provider))
	}
	for _, u := range []struct{ key, url string }{{"billing.api_base", b.APIBase}, {"billing.success_url", b.SuccessURL},
		{"billing.cancel_url", b.CancelURL}, {"billing.portal_return_url", b.PortalReturnURL}} {
		if u.url != "" && !isHTTPURL(u.url) {
			errs = append(errs, fmt.Errorf("%s must be an http:// or https:// URL, got %q", u.key, u.url))
		}
	}
	if !currencyPattern.MatchString(b.Currency) {
		errs = append(errs, fmt.Errorf("billing.currency must be a three-letter ISO code in lower case, got %q", b.Currency))
	}
	if b.GracePeriod < 0 {
		errs = append(errs, fmt.Errorf("billing.grace_period must not be negative, got %s", b.GracePeriod))
	}
	return errs
}

func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// BaseURL is where people reach the API: public_url, or http://<http.addr>.
func (c Config) BaseURL() string {
	if c.PublicURL != "" {
		return strings.TrimSuffix(c.PublicURL, "/")
	}
	return "http://" + c.HTTP.Addr
}

// NATSURL is the URL agents are told to connect to.
func (c Config) NATSURL() string {
	if c.NATS.AdvertiseURL != "" {
		return c.NATS.AdvertiseURL
	}
	return "nats://" + c.NATS.Listen
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	if c.DemoInstances < 0 {
		errs = append(errs, fmt.Errorf("demo_instances must not be negative, got %d", c.DemoInstances))
	}
	if c.DemoInstances > 0 && !c.Dev {
		errs = append(errs, errors.New("demo_instances needs dev mode"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level must be debug, info, warn or error, got %q", c.Log.Level))
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		errs = append(errs, fmt.Errorf("log.format must be text or json, got %q", c.Log.Format))
	}
	// Slices, not maps, so problems are reported in a stable order.
	for _, a := range []struct{ key, addr string }{{"http.addr", c.HTTP.Addr}, {"nats.listen", c.NATS.Listen}} {
		if _, port, err := net.SplitHostPort(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s must be host:port, got %q", a.key, a.addr))
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			errs = append(errs, fmt.Errorf("%s has an invalid port in %q", a.key, a.addr))
		}
	}
	for _, o := range c.HTTP.CORSOrigins {
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" {
			errs = append(errs, fmt.Errorf("http.cors_origins: %q is not an origin like https://app.example.com", o))
		}
	}
	if u := c.NATS.AdvertiseURL; u != "" && !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
		errs = append(errs, fmt.Errorf("nats.advertise_url must start with nats:// or tls://, got %q", u))
	}
	if c.Stacks.Image == "" {
		errs = append(errs, errors.New("stacks.image is required"))
	}
	if c.Zone == "" {
		errs = append(errs, errors.New("zone is required"))
	}
	if len(c.Plans) == 0 {
		errs = append(errs, errors.New("plans: at least one plan is required"))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Plans)) {
		errs = append(errs, c.Plans[name].validate("plans."+name)...)
	}
	errs = append(errs, c.Billing.validate(c.Plans)...)
	if c.Jobs.Workers < 1 || c.Jobs.Attempts < 1 {
		errs = append(errs, fmt.Errorf("jobs.workers and jobs.attempts must be at least 1, got %d and %d", c.Jobs.Workers, c.Jobs.Attempts))
	}
	if c.Jobs.RetryBase <= 0 || c.Jobs.RetryMax < c.Jobs.RetryBase || c.Jobs.WaitTimeout <= 0 {
		errs = append(errs, errors.New("jobs: retry_base and wait_timeout must be positive, retry_max at least retry_base"))
	}
	f := c.Fleet
	for _, p := range []struct {
		key string
		d   time.Duration
	}{{"fleet.heartbeat_interval", f.HeartbeatInterval}, {"fleet.metrics_interval", f.MetricsInterval},
		{"enrollment.token_ttl", c.Enrollment.TokenTTL}, {"aws.poll_interval", c.AWS.PollInterval}} {
		if p.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", p.key, p.d))
		}
	}
	if f.StaleAfter <= f.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("fleet.stale_after (%s) must be longer than fleet.heartbeat_interval (%s)", f.StaleAfter, f.HeartbeatInterval))
	}
	if f.OfflineAfter <= f.StaleAfter {
		errs = append(errs, fmt.Errorf("fleet.offline_after (%s) must be longer than fleet.stale_after (%s)", f.OfflineAfter, f.StaleAfter))
	}
	switch c.Provider {
	case "local":
	case "ec2":
		if c.AWS.SubnetID == "" {
			errs = append(errs, errors.New("provider ec2 needs aws.subnet_id"))
		}
		for _, name := range slices.Sorted(maps.Keys(c.Plans)) {
			if c.Plans[name].AMI == "" && c.AWS.AMI == "" {
				errs = append(errs, fmt.Errorf("plans.%s: provider ec2 needs its ami, or aws.ami", name))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("provider must be local or ec2, got %q", c.Provider))
	}
	switch c.DNS {
	case "store":
	case "route53":
		if c.AWS.HostedZoneID == "" {
			errs = append(errs, errors.New("dns route53 needs aws.hosted_zone_id"))
		}
	default:
		errs = append(errs, fmt.Errorf("dns must be store or route53, got %q", c.DNS))
	}
	if (c.Provider == "ec2" || c.DNS == "route53") && c.AWS.Region == "" {
		errs = append(errs, errors.New("aws.region is required with provider ec2 or dns route53"))
	}
	if e := c.AWS.Endpoint; e != "" {
		if !isHTTPURL(e) {
			errs = append(errs, fmt.Errorf("aws.endpoint must be an http:// or https:// URL, got %q", e))
		}
	}
	a := c.Auth
	if a.AccessTTL <= 0 || a.RefreshTTL <= a.AccessTTL || a.KeyRotation <= a.AccessTTL {
		errs = append(errs, errors.New("auth: access_ttl must be positive, refresh_ttl and key_rotation longer than it"))
	}
	for _, l := range []struct {
		key string
		l   Limit
	}{{"auth.per_ip", a.PerIP}, {"auth.per_account", a.PerAccount}} {
		if l.l.Attempts < 1 || l.l.Window <= 0 {
			errs = append(errs, fmt.Errorf("%s: attempts must be at least 1 and window positive, got %d in %s", l.key, l.l.Attempts, l.l.Window))
		}
	}
	if _, err := mail.ParseAddress(c.Mail.From); err != nil {
		errs = append(errs, fmt.Errorf("mail.from must be an address such as StackPro <no-reply@example.com>, got %q", c.Mail.From))
	}
	switch c.Mail.SMTP.StartTLS {
	case "required", "opportunistic", "none":
	default:
		errs = append(errs, fmt.Errorf("mail.smtp.starttls must be required, opportunistic or none, got %q", c.Mail.SMTP.StartTLS))
	}
	if (c.Mail.SMTP.Username == "") != (c.Mail.SMTP.Password == "") {
		errs = append(errs, errors.New("mail.smtp.username and mail.smtp.password go together"))
	}
	if c.PublicURL != "" && !isHTTPURL(c.PublicURL) {
		errs = append(errs, fmt.Errorf("public_url must be an http(s) URL, got %q", c.PublicURL))
	}
	return errors.Join(errs...)
}

// ReadFile applies the YAML file at path over c.
func (c *Config) ReadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	return c.LoadFile(f, path)
}
