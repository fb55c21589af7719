// Package buildinfo holds the version and commit a binary was built from,
// set at link time:
//
//	go build -ldflags "-X github.com/stackpro/stackpro/shared/buildinfo.Version=v0.1.0 \
//	  -X github.com/stackpro/stackpro/shared/buildinfo.Commit=abc1234"
package buildinfo

// Set with -ldflags -X; the defaults mark a build that did not set them.
var (
	Version = "dev"
	Commit  = "unknown"
)

// String is the version and commit in one line, for logs and --version.
func String() string { return Version + " (" + Commit + ")" }
