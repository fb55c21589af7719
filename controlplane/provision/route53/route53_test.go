package route53_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/stackpro/stackpro/controlplane/provision/route53"
)

const zoneID = "Z0123456789ABC"

// change is one change of a ChangeResourceRecordSets request as sent.
type change struct {
	Action string   `xml:"Action"`
	Name   string   `xml:"ResourceRecordSet>Name"`
	Type   string   `xml:"ResourceRecordSet>Type"`
	TTL    int64    `xml:"ResourceRecordSet>TTL"`
	Values []string `xml:"ResourceRecordSet>ResourceRecords>ResourceRecord>Value"`
}

// fakeRoute53 speaks as much of Route 53's REST-XML protocol as the DNS
// uses: one hosted zone of A records, whose changes are PENDING at the
// first GetChange and INSYNC after.
type fakeRoute53 struct {
	// batchDocument answers InvalidChangeBatch in Route 53's own
	// <InvalidChangeBatch> document instead of an <ErrorResponse>.
	batchDocument bool

	mu      sync.Mutex
	changes []change
	records map[string]change // by name
	polls   map[string]int    // change id → GetChange calls
}

func (f *fakeRoute53) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	// The API's path ends in rrset/; the SDK sends it without the slash.
	case r.Method == http.MethodPost && strings.TrimSuffix(r.URL.Path, "/") == "/2013-04-01/hostedzone/"+zoneID+"/rrset":
		var req struct {
			Changes []change `xml:"ChangeBatch>Changes>Change"`
		}
		if err := xml.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Changes) != 1 {
			f.fail(w, http.StatusBadRequest, "InvalidInput", fmt.Sprintf("want one change: %v", err))
			return
		}
		c := req.Changes[0]
		f.changes = append(f.changes, c)
		switch old, ok := f.records[c.Name]; {
		case c.Action == "UPSERT":
			f.records[c.Name] = c
		case c.Action == "DELETE" && !ok:
			f.fail(w, http.StatusBadRequest, "InvalidChangeBatch",
				fmt.Sprintf("Tried to delete resource record set [name='%s.', type='A'] but it was not found", c.Name))
			return
		case c.Action == "DELETE" && (old.Type != c.Type || old.TTL != c.TTL || !slices.Equal(old.Values, c.Values)):
			f.fail(w, http.StatusBadRequest, "InvalidChangeBatch",
				fmt.Sprintf("Tried to delete resource record set [name='%s.', type='A'] but the values provided do not match the current values", c.Name))
			return
		default:
			delete(f.records, c.Name)
		}
		id := fmt.Sprintf("C%d", len(f.changes))
		f.polls[id] = 0
		fmt.Fprintf(w, `<ChangeResourceRecordSetsResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeInfo>`+
			`<Id>/change/%s</Id><Status>PENDING</Status><SubmittedAt>2026-01-02T03:04:05.000Z</SubmittedAt></ChangeInfo></ChangeResourceRecordSetsResponse>`, id)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/2013-04-01/change/"):
		id := strings.TrimPrefix(r.URL.Path, "/2013-04-01/change/")
		n, ok := f.polls[id]
		if !ok {
			f.fail(w, http.StatusNotFound, "NoSuchChange", "no change "+id)
			return
		}
		f.polls[id] = n + 1
		status := "INSYNC"
		if n == 0 {
			status = "PENDING"
		}
		fmt.Fprintf(w, `<GetChangeResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeInfo>`+
			`<Id>/change/%s</Id><Status>%s</Status><SubmittedAt>2026-01-02T03:04:05.000Z</SubmittedAt></ChangeInfo></GetChangeResponse>`, id, status)
	default:
		f.fail(w, http.StatusNotFound, "NoSuchHostedZone", "no such zone or operation: "+r.Method+" "+r.URL.Path)
	}
}

func (f *fakeRoute53) fail(w http.ResponseWriter, status int, code, msg string) {
	w.WriteHeader(status)
	if f.batchDocument && code == "InvalidChangeBatch" {
		fmt.Fprintf(w, `<?xml version="1.0"?>`+"\n"+`<InvalidChangeBatch xmlns="https://route53.amazonaws.com/doc/2013-04-01/">`+
			`<Messages><Message>%s</Message></Messages><RequestId>req-1</RequestId></InvalidChangeBatch>`, msg)
		return
	}
	fmt.Fprintf(w, `<?xml version="1.0"?>`+"\n"+`<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">`+
		`<Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>req-1</RequestId></ErrorResponse>`, code, msg)
}

func (f *fakeRoute53) state() ([]change, map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	polls := map[string]int{}
	for id, n := range f.polls {
		polls[id] = n
	}
	return append([]change(nil), f.changes...), polls
}

// start runs a fake Route 53 and returns it with a DNS talking to it
// through the real client.
func start(t *testing.T, batchDocument bool) (*fakeRoute53, *route53.DNS) {
	t.Helper()
	f := &fakeRoute53{batchDocument: batchDocument, records: map[string]change{}, polls: map[string]int{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := aws.Config{Region: "us-east-1", BaseEndpoint: aws.String(srv.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "not-a-secret", "")}
	return f, route53.New(cfg, route53.Options{HostedZoneID: "/hostedzone/" + zoneID, PollInterval: time.Millisecond})
}

func TestUpsertWaitsUntilInSync(t *testing.T) {
	f, dns := start(t, false)
	if err := dns.Upsert(context.Background(), "acme.example.test", "10.0.0.7"); err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	changes, polls := f.state()
	want := change{Action: "UPSERT", Name: "acme.example.test", Type: "A", TTL: 60, Values: []string{"10.0.0.7"}}
	if len(changes) != 1 || !reflect.DeepEqual(changes[0], want) {
		t.Errorf("changes sent = %+v, want %+v", changes, want)
	}
	if polls["C1"] != 2 {
		t.Errorf("GetChange asked %d times, want 2 (PENDING, then INSYNC)", polls["C1"])
	}
}

func TestDelete(t *testing.T) {
	for _, batchDocument := range []bool{false, true} {
		t.Run(fmt.Sprintf("batchDocument=%t", batchDocument), func(t *testing.T) {
			f, dns := start(t, batchDocument)
			ctx := context.Background()
			if err := dns.Upsert(ctx, "acme.example.test", "10.0.0.7"); err != nil {
				t.Fatal(err)
			}
			// Another address is another record: Route 53 refuses, and so must Delete.
			if err := dns.Delete(ctx, "acme.example.test", "10.0.0.8"); err == nil || !strings.Contains(err.Error(), "InvalidChangeBatch") {
				t.Errorf("Delete of a record with other values = %v, want Route 53's refusal", err)
			}
			if err := dns.Delete(ctx, "acme.example.test", "10.0.0.7"); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if err := dns.Delete(ctx, "acme.example.test", "10.0.0.7"); err != nil {
				t.Errorf("Delete of a record already gone = %v, want nil", err)
			}
			changes, _ := f.state()
			want := change{Action: "DELETE", Name: "acme.example.test", Type: "A", TTL: 60, Values: []string{"10.0.0.7"}}
			if len(changes) != 4 || !reflect.DeepEqual(changes[2], want) {
				t.Errorf("changes sent = %+v, want the third to be %+v", changes, want)
			}
		})
	}
}
