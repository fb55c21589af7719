package fleetsim

import (
	"slices"
	"testing"
)

func TestParseControl(t *testing.T) {
	tests := []struct {
		line string
		want control
		ok   bool
	}{
		{"fail 10%", control{b: Failing, share: 0.1}, true},
		{"silent 0.05", control{b: Silent, share: 0.05}, true},
		{"  offline   100% ", control{b: Offline, share: 1}, true},
		{"normal", control{b: Normal}, true},
		{"offline i-a i-b", control{b: Offline, ids: []string{"i-a", "i-b"}}, true},
		{"normal i-a", control{b: Normal, ids: []string{"i-a"}}, true},
		{"", control{}, false},
		{"explode 10%", control{}, false},
		{"fail", control{}, false},
		{"fail 10% 20%", control{}, false},
		{"fail 110%", control{}, false},
		{"fail -1%", control{}, false},
		{"fail ten", control{}, false},
		{"normal 10%", control{}, false},
		{"fail i-a BAD", control{}, false},
	}
	for _, tt := range tests {
		got, err := parseControl(tt.line)
		if (err == nil) != tt.ok {
			t.Errorf("parseControl(%q) error = %v, want ok %v", tt.line, err, tt.ok)
			continue
		}
		if tt.ok && (got.b != tt.want.b || got.share != tt.want.share || !slices.Equal(got.ids, tt.want.ids)) {
			t.Errorf("parseControl(%q) = %+v, want %+v", tt.line, got, tt.want)
		}
	}
}

func TestSpreadPicksEvenly(t *testing.T) {
	order := spread(1000)
	if len(order) != 1000 {
		t.Fatalf("spread(1000) has %d entries", len(order))
	}
	seen := map[int]bool{}
	for _, i := range order {
		seen[i] = true
	}
	if len(seen) != 1000 {
		t.Fatalf("spread(1000) is no permutation: %d distinct", len(seen))
	}
	// The first 10% fall roughly 10 to each tenth of the range.
	var tenths [10]int
	for _, i := range order[:100] {
		tenths[i/100]++
	}
	for k, n := range tenths {
		if n < 7 || n > 13 {
			t.Errorf("tenth %d holds %d of the first 100 picked, want about 10: %v", k, n, tenths)
		}
	}
}
