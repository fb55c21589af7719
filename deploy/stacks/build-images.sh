#!/usr/bin/env bash
# Builds the image of the starter stack's stand-in services FROM scratch
# from our own Go program, so a stack runs with no registry at all.
# usage: deploy/stacks/build-images.sh [tag]    (default: stackpro/demo:dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-stackpro/demo:dev}
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$context/demo" ./deploy/stacks/demo)
printf 'FROM scratch\nCOPY demo /demo\nENTRYPOINT ["/demo"]\n' >"$context/Dockerfile"
# The output only matters when the build fails (the legacy builder also
# prints a deprecation notice on every build).
if ! out=$(docker build -q -t "$tag" "$context" 2>&1); then
	echo "$out" >&2
	exit 1
fi
echo "$tag"
