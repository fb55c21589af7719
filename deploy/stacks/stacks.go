// Package stacks holds each plan's stack template, a compose file under
// <plan>/compose.yaml, embedded in the control plane, and renders it for
// one instance.
package stacks

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"text/template"
)

//go:embed */compose.yaml
var templates embed.FS

// ErrUnknownPlan is returned for a plan without a template.
var ErrUnknownPlan = errors.New("stacks: no template for plan")

// Params fill a template's placeholders.
type Params struct {
	InstanceID string
	Subdomain  string
	// Image is the image of the stand-in services (stackpro/demo:dev).
	Image string
}

// Render returns plan's compose file for one instance.
func Render(plan string, p Params) (string, error) {
	raw, err := fs.ReadFile(templates, plan+"/compose.yaml")
	if err != nil {
		return "", fmt.Errorf("%w %q", ErrUnknownPlan, plan)
	}
	tmpl, err := template.New(plan).Option("missingkey=error").Parse(string(raw))
	if err != nil {
		return "", fmt.Errorf("stacks: template %s: %w", plan, err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, p); err != nil {
		return "", fmt.Errorf("stacks: rendering %s: %w", plan, err)
	}
	return out.String(), nil
}
