// Package secrets resolves the references configuration holds in place of
// secrets — env:NAME, file:/path, aws-sm:<secret id or ARN> — into Secrets,
// values that print, log and encode as [redacted] and give themselves up
// only to Reveal.
package secrets

import (
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

const redacted = "[redacted]"

// Secret is a secret value. It sits behind a pointer so that fmt, printing
// a struct that holds a Secret in an unexported field (where it cannot call
// Secret's methods), shows an address and not the value.
type Secret struct{ value *string }

// Reveal returns the value.
func (s Secret) Reveal() string {
	if s.value == nil {
		return ""
	}
	return *s.value
}

// String, GoString and Format (fmt, whatever the verb), LogValue
// (log/slog), MarshalText and MarshalJSON (encoders) all give [redacted].
func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) Format(f fmt.State, _ rune)   { _, _ = io.WriteString(f, redacted) }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// Every way out but Reveal is closed.
var (
	_ fmt.Stringer           = Secret{}
	_ fmt.GoStringer         = Secret{}
	_ fmt.Formatter          = Secret{}
	_ slog.LogValuer         = Secret{}
	_ encoding.TextMarshaler = Secret{}
	_ json.Marshaler         = Secret{}
)

// Resolve returns the secret ref points to:
//
//	env:NAME                   the environment variable NAME
//	file:/path                 the file's content without its trailing newline;
//	                           the file must be readable by its owner alone
//	aws-sm:<secret id or ARN>  the SecretString of an AWS Secrets Manager secret
//
// awsConfig is called for aws-sm: references only. Anything else is an
// error, so that no secret is pasted into configuration; errors never
// repeat ref, which may be a secret pasted by mistake.
func Resolve(ctx context.Context, ref string, awsConfig func() (aws.Config, error)) (Secret, error) {
	scheme, rest, _ := strings.Cut(ref, ":")
	var value string
	switch scheme {
	case "env":
		v, ok := os.LookupEnv(rest)
		if !ok {
			return Secret{}, fmt.Errorf("secrets: environment variable %s is not set", rest)
		}
		value = v
	case "file":
		v, err := readFile(rest)
		if err != nil {
			return Secret{}, err
		}
		value = v
	case "aws-sm":
		v, err := fromSecretsManager(ctx, rest, awsConfig)
		if err != nil {
			return Secret{}, err
		}
		value = v
	default:
		return Secret{}, errors.New("secrets: a secret reference starts with env:, file: or aws-sm: (the secret itself never goes in the configuration)")
	}
	if value == "" {
		return Secret{}, fmt.Errorf("secrets: %s:%s is empty", scheme, rest)
	}
	return Secret{&value}, nil
}

// readFile reads a secret file, refusing one that others than its owner
// may read or write.
func readFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	if mode := info.Mode().Perm(); mode&0o077 != 0 {
		return "", fmt.Errorf("secrets: %s has mode %#o, open to others than its owner: chmod 600 it", path, mode)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("secrets: reading %s: %w", path, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func fromSecretsManager(ctx context.Context, id string, awsConfig func() (aws.Config, error)) (string, error) {
	if awsConfig == nil {
		return "", fmt.Errorf("secrets: aws-sm:%s: no AWS configuration", id)
	}
	cfg, err := awsConfig()
	if err != nil {
		return "", fmt.Errorf("secrets: aws-sm:%s: %w", id, err)
	}
	out, err := secretsmanager.NewFromConfig(cfg).GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)})
	if err != nil {
		return "", fmt.Errorf("secrets: aws-sm:%s: %w", id, err)
	}
	if out.SecretString == nil {
		return "", fmt.Errorf("secrets: aws-sm:%s holds binary data, want a string", id)
	}
	return *out.SecretString, nil
}
