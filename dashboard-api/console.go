package dashboardapi

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

// The ops console: a page and its assets, no build step. index.html is
// served at / and everything at /console/<name>.
//
//go:embed console
var consoleFiles embed.FS

// consoleCSP allows the console's own scripts, styles and API calls and
// nothing else: no inline script, no other origin, no framing.
const consoleCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// consoleTypes are the Content-Types of the console's files, spelled out
// rather than read from the host's mime tables, which vary.
var consoleTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".json": "application/json",
}

// consoleFile is one embedded file, read once.
type consoleFile struct {
	name, ctype, etag string
	body              []byte
}

// newConsole reads the embedded files once and returns the handler of the
// console: index.html at / (and at /console/index.html), its assets under
// /console/. Every answer is revalidated (no-cache) against a strong ETag,
// so a new binary's console is picked up at once and an unchanged one
// costs a 304.
func newConsole() func(http.ResponseWriter, *http.Request) error {
	files := map[string]consoleFile{}
	err := fs.WalkDir(consoleFiles, "console", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := consoleFiles.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		name := strings.TrimPrefix(p, "console/")
		ctype, ok := consoleTypes[path.Ext(name)]
		if !ok {
			ctype = "application/octet-stream"
		}
		files[name] = consoleFile{name: name, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, body: body}
		return nil
	})
	if err != nil {
		panic("dashboardapi: reading the embedded console: " + err.Error()) // the files are compiled in
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		name := "index.html"
		if r.URL.Path != "/" {
			name = strings.TrimPrefix(r.URL.Path, "/console/")
		}
		f, ok := files[name]
		if !ok {
			return httpError{Code: http.StatusNotFound, Msg: "no such console file"}
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		h.Set("X-Content-Type-Options", "nosniff")
		if path.Ext(f.name) == ".html" {
			h.Set("Content-Security-Policy", consoleCSP)
			h.Set("Referrer-Policy", "no-referrer")
			h.Set("X-Frame-Options", "DENY")
		}
		http.ServeContent(w, r, f.name, time.Time{}, bytes.NewReader(f.body))
		return nil
	}
}
