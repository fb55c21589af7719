package secrets_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/controlplane/internal/secrets"
)

const value = "hunter2-correct-horse"

// fakeSecretsManager answers GetSecretValue in Secrets Manager's JSON 1.1
// protocol from secrets, by name or ARN.
func fakeSecretsManager(t *testing.T, secrets map[string]string) func() (aws.Config, error) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		var in struct{ SecretId string }
		if r.Header.Get("X-Amz-Target") != "secretsmanager.GetSecretValue" || json.NewDecoder(r.Body).Decode(&in) != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"__type":"InvalidRequestException","message":"want GetSecretValue"}`)
			return
		}
		s, ok := secrets[in.SecretId]
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"__type":"ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}`)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:" + in.SecretId,
			"Name": in.SecretId, "SecretString": s, "VersionId": "v1", "VersionStages": []string{"AWSCURRENT"}})
	}))
	t.Cleanup(srv.Close)
	return func() (aws.Config, error) {
		return aws.Config{Region: "eu-west-1", BaseEndpoint: aws.String(srv.URL),
			Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "not-a-secret", "")}, nil
	}
}

func writeSecret(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return path
}

func TestResolve(t *testing.T) {
	t.Setenv("STACKPRO_TEST_SECRET", value)
	t.Setenv("STACKPRO_TEST_EMPTY", "")
	awsConfig := fakeSecretsManager(t, map[string]string{"stackpro/enrollment-key": value})
	tests := []struct {
		ref     string
		wantErr string // empty: want value
	}{
		{"env:STACKPRO_TEST_SECRET", ""},
		{"file:" + writeSecret(t, value+"\n", 0o600), ""},
		{"file:" + writeSecret(t, value, 0o400), ""},
		{"aws-sm:stackpro/enrollment-key", ""},
		{"env:STACKPRO_TEST_UNSET", "not set"},
		{"env:STACKPRO_TEST_EMPTY", "is empty"},
		{"file:" + writeSecret(t, value, 0o640), "chmod 600"},
		{"file:" + writeSecret(t, value, 0o604), "chmod 600"},
		{"file:/nonexistent/secret", "no such file"},
		{"aws-sm:stackpro/other", "ResourceNotFoundException"},
		{value, "starts with env:, file: or aws-sm:"},
		{"vault:" + value, "starts with env:, file: or aws-sm:"},
		{"", "starts with env:, file: or aws-sm:"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			s, err := secrets.Resolve(context.Background(), tt.ref, awsConfig)
			switch {
			case tt.wantErr == "" && (err != nil || s.Reveal() != value):
				t.Errorf("Resolve = %q, %v; want the value", s.Reveal(), err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Resolve = %v, want an error saying %q", err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), value):
				t.Errorf("the error repeats the secret: %v", err)
			}
		})
	}
}

// However a Secret leaves, on its own or inside a struct, its value stays in.
func TestSecretIsRedacted(t *testing.T) {
	t.Setenv("STACKPRO_TEST_SECRET", value)
	s, err := secrets.Resolve(context.Background(), "env:STACKPRO_TEST_SECRET", nil)
	if err != nil {
		t.Fatal(err)
	}
	type config struct {
		Name string
		Key  secrets.Secret
		key  secrets.Secret // fmt cannot call methods through an unexported field
	}
	holder := config{Name: "acme", Key: s, key: s}

	var out bytes.Buffer
	for _, log := range []*slog.Logger{slog.New(slog.NewTextHandler(&out, nil)), slog.New(slog.NewJSONHandler(&out, nil))} {
		log.Info("resolved", "secret", s, "config", holder, "pointer", &holder)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		fmt.Fprintf(&out, verb+"\n", s)
		fmt.Fprintf(&out, verb+"\n", holder)
	}
	for _, v := range []any{s, holder} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(b)
		b, err = yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(b)
	}
	if strings.Contains(out.String(), value) {
		t.Errorf("the value got out:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "[redacted]") {
		t.Errorf("no [redacted] in:\n%s", out.String())
	}
}
