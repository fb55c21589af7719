package dashboardapi

import (
	"regexp"
	"slices"
	"testing"
)

// The console's command form offers exactly the commands the API sends.
func TestConsoleCommandsAreTheCatalog(t *testing.T) {
	page, err := consoleFiles.ReadFile("console/index.html")
	if err != nil {
		t.Fatal(err)
	}
	form := regexp.MustCompile(`(?s)<select id="command-name"[^>]*>(.*?)</select>`).FindSubmatch(page)
	if form == nil {
		t.Fatal(`index.html has no <select id="command-name">`)
	}
	var offered []string
	for _, m := range regexp.MustCompile(`<option value="([^"]+)"`).FindAllSubmatch(form[1], -1) {
		offered = append(offered, string(m[1]))
	}
	if !slices.Equal(offered, operatorCommands) {
		t.Errorf("the command form offers %v, want %v", offered, operatorCommands)
	}
}
