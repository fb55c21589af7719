package stacks_test

import (
	"errors"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/deploy/stacks"
)

func TestRenderStarter(t *testing.T) {
	out, err := stacks.Render("starter", stacks.Params{InstanceID: "i-abc", Subdomain: "acme", Image: "stackpro/demo:dev"})
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image       string
			Healthcheck map[string]any
		}
	}
	if err := yaml.Unmarshal([]byte(out), &compose); err != nil {
		t.Fatalf("rendered compose is not YAML: %v\n%s", err, out)
	}
	if len(compose.Services) != 2 {
		t.Errorf("services = %v, want crm and files", compose.Services)
	}
	for name, s := range compose.Services {
		if s.Image != "stackpro/demo:dev" || s.Healthcheck == nil {
			t.Errorf("service %s: image %q, healthcheck %v", name, s.Image, s.Healthcheck)
		}
	}
	if strings.Contains(out, "{{") || !strings.Contains(out, `"acme"`) || !strings.Contains(out, `"i-abc"`) {
		t.Errorf("placeholders not filled:\n%s", out)
	}
}

func TestRenderUnknownPlan(t *testing.T) {
	if _, err := stacks.Render("platinum", stacks.Params{}); !errors.Is(err, stacks.ErrUnknownPlan) {
		t.Errorf("Render(platinum) = %v, want ErrUnknownPlan", err)
	}
}
