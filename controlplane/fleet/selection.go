package fleet

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Selection picks the instances a run targets. Every field set must match
// (ids, plan, region, agent version, status, each tag); All must be set to
// pick the whole fleet, so that an empty selection never means everything.
type Selection struct {
	IDs     []string          `json:"ids,omitempty"`
	Plan    string            `json:"plan,omitempty"`
	Region  string            `json:"region,omitempty"`
	Version string            `json:"version,omitempty"`
	Status  Status            `json:"status,omitempty"`
	Tags    map[string]string `json:"tags,omitempty"`
	All     bool              `json:"all,omitempty"`
}

// Empty reports whether s sets no criterion (All aside).
func (s Selection) Empty() bool {
	return len(s.IDs) == 0 && s.Plan == "" && s.Region == "" && s.Version == "" && s.Status == "" && len(s.Tags) == 0
}

// Validate reports what is wrong with s, every problem at once.
func (s Selection) Validate() error {
	var errs []error
	if s.Empty() == !s.All {
		errs = append(errs, errors.New("select: set all, or at least one of ids, plan, region, version, status, tags (not both)"))
	}
	if s.Status != "" && !slices.Contains(statuses, s.Status) {
		errs = append(errs, fmt.Errorf("select: unknown status %q", s.Status))
	}
	for k := range s.Tags {
		if err := validTagKey(k); err != nil {
			errs = append(errs, fmt.Errorf("select: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Match reports whether inst, with status st, is selected.
func (s Selection) Match(inst Instance, st Status) bool {
	switch {
	case len(s.IDs) > 0 && !slices.Contains(s.IDs, inst.ID),
		s.Plan != "" && inst.Plan != s.Plan,
		s.Region != "" && inst.Region != s.Region,
		s.Version != "" && inst.AgentVersion != s.Version,
		s.Status != "" && st != s.Status:
		return false
	}
	for k, v := range s.Tags {
		if got, ok := inst.Tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// String is s in the selector syntax stackctl takes: "all", or
// comma-separated key=value pairs (tag.<key>=<value> for tags, ids as
// id=<id> once per id).
func (s Selection) String() string {
	if s.All {
		return "all"
	}
	var parts []string
	for _, id := range s.IDs {
		parts = append(parts, "id="+id)
	}
	for _, kv := range [][2]string{{"plan", s.Plan}, {"region", s.Region}, {"version", s.Version}, {"status", string(s.Status)}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Tags)) {
		parts = append(parts, "tag."+k+"="+s.Tags[k])
	}
	return strings.Join(parts, ",")
}

// ParseSelection reads the selector syntax String writes.
func ParseSelection(text string) (Selection, error) {
	var s Selection
	text = strings.TrimSpace(text)
	if text == "all" {
		s.All = true
		return s, nil
	}
	for part := range strings.SplitSeq(text, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || v == "" {
			return s, fmt.Errorf("select: %q is not key=value (or all)", part)
		}
		switch {
		case k == "id":
			s.IDs = append(s.IDs, v)
		case k == "plan":
			s.Plan = v
		case k == "region":
			s.Region = v
		case k == "version":
			s.Version = v
		case k == "status":
			s.Status = Status(v)
		case strings.HasPrefix(k, "tag."):
			if s.Tags == nil {
				s.Tags = map[string]string{}
			}
			s.Tags[strings.TrimPrefix(k, "tag.")] = v
		default:
			return s, fmt.Errorf("select: unknown key %q (want id, plan, region, version, status, tag.<key>)", k)
		}
	}
	return s, s.Validate()
}

// statuses lists every Status.
var statuses = []Status{StatusProvisioning, StatusOnline, StatusDegraded, StatusStale, StatusOffline}

// validTagKey: 1-63 of [a-z0-9_.-], starting with a letter or digit.
func validTagKey(k string) error {
	if len(k) == 0 || len(k) > 63 {
		return fmt.Errorf("tag key %q: want 1-63 characters", k)
	}
	for i, r := range k {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || i > 0 && (r == '_' || r == '.' || r == '-')
		if !ok {
			return fmt.Errorf("tag key %q: want [a-z0-9] then [a-z0-9_.-]", k)
		}
	}
	return nil
}

// ValidateTags reports what is wrong with an instance's tags.
func ValidateTags(tags map[string]string) error {
	var errs []error
	if len(tags) > 50 {
		errs = append(errs, errors.New("at most 50 tags"))
	}
	for k, v := range tags {
		if err := validTagKey(k); err != nil {
			errs = append(errs, err)
		}
		if len(v) > 255 {
			errs = append(errs, fmt.Errorf("tag %q: value longer than 255 bytes", k))
		}
	}
	return errors.Join(errs...)
}
