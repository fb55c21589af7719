package fleetsim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Credential is what one simulated agent enrolls with: its instance id and
// the one-time enrollment token minted for it.
type Credential struct {
	InstanceID string `json:"instance_id"`
	Token      string `json:"token"`
}

// LoadCredentials reads a credentials file (see ReadCredentials).
func LoadCredentials(path string) ([]Credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fleetsim: %w", err)
	}
	defer f.Close()
	creds, err := ReadCredentials(f)
	if err != nil {
		return nil, fmt.Errorf("fleetsim: %s: %w", path, err)
	}
	return creds, nil
}

// ReadCredentials reads JSON lines, one {"instance_id":…,"token":…} a
// line; blank lines are skipped. It reports every bad line at once: an
// unknown field, an invalid instance id, a missing token, a duplicate id.
func ReadCredentials(r io.Reader) ([]Credential, error) {
	var creds []Credential
	var errs []error
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var c Credential
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		if err := protocol.ValidInstanceID(c.InstanceID); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
		}
		if c.Token == "" {
			errs = append(errs, fmt.Errorf("line %d: no token for %s", n, c.InstanceID))
		}
		if first, dup := seen[c.InstanceID]; dup {
			errs = append(errs, fmt.Errorf("line %d: %s already on line %d", n, c.InstanceID, first))
		}
		seen[c.InstanceID] = n
		creds = append(creds, c)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(creds) == 0 {
		return nil, errors.New("no credentials")
	}
	return creds, nil
}

// WriteCredentials writes creds as ReadCredentials reads them.
func WriteCredentials(w io.Writer, creds []Credential) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for _, c := range creds {
		if err := enc.Encode(c); err != nil {
			return err
		}
	}
	return bw.Flush()
}
