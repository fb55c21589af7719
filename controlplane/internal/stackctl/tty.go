package stackctl

import "os"

// terminal returns the terminal behind a stream, if it is one.
func terminal(stream any) (*os.File, bool) {
	f, ok := stream.(*os.File)
	return f, ok && isTerminal(f)
}
