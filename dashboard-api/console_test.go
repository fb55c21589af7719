package dashboardapi

import (
	"regexp"
	"slices"
	"testing"

	"github.com/stackpro/stackpro/shared/protocol"
)

// selectOptions is the option values of index.html's <select id="id">.
func selectOptions(t *testing.T, page []byte, id string) []string {
	t.Helper()
	form := regexp.MustCompile(`(?s)<select id="` + regexp.QuoteMeta(id) + `"[^>]*>(.*?)</select>`).FindSubmatch(page)
	if form == nil {
		t.Fatalf(`index.html has no <select id=%q>`, id)
	}
	var offered []string
	for _, m := range regexp.MustCompile(`<option value="([^"]+)"`).FindAllSubmatch(form[1], -1) {
		offered = append(offered, string(m[1]))
	}
	return offered
}

// The console's command forms offer exactly the commands the API sends:
// the instance page's list is the catalog, and the run form has no list
// of its own (app.js copies the instance page's; the browser test checks
// the copy).
func TestConsoleCommandsAreTheCatalog(t *testing.T) {
	page, err := consoleFiles.ReadFile("console/index.html")
	if err != nil {
		t.Fatal(err)
	}
	if offered := selectOptions(t, page, "command-name"); !slices.Equal(offered, protocol.OperatorCommands) {
		t.Errorf("the command form offers %v, want %v", offered, protocol.OperatorCommands)
	}
	if offered := selectOptions(t, page, "run-command"); len(offered) != 0 {
		t.Errorf("the run form lists commands of its own %v; it copies #command-name's", offered)
	}
}
