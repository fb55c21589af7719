package dashboardapi

import (
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Lists are paged: ?limit= (1 to maxLimit, defaultLimit when absent) and
// ?cursor=, the next_cursor of the page before. A cursor is the key of
// the last item sent, so a page never repeats or skips an item when items
// come or go between pages.
const (
	defaultLimit = 100
	maxLimit     = 500
)

// pageRequest is a list request's limit and the key its cursor holds.
type pageRequest struct {
	limit int
	after string
}

// readPage reads ?limit and ?cursor, answering 400 for bad ones.
func readPage(r *http.Request) (pageRequest, error) {
	p := pageRequest{limit: defaultLimit}
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxLimit {
			return p, httpError{Code: http.StatusBadRequest, Msg: fmt.Sprintf("limit: want a number from 1 to %d", maxLimit)}
		}
		p.limit = n
	}
	if s := r.URL.Query().Get("cursor"); s != "" {
		key, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(key) == 0 {
			return p, httpError{Code: http.StatusBadRequest, Msg: "cursor: not one this API gave"}
		}
		p.after = string(key)
	}
	return p, nil
}

// page returns the items of p from items, which are sorted by key (key
// must sort in list order), and the cursor of the next page, "" on the last.
func page[T any](items []T, key func(T) string, p pageRequest) ([]T, string) {
	start := 0
	if p.after != "" {
		start, _ = slices.BinarySearchFunc(items, p.after, func(it T, k string) int { return strings.Compare(key(it), k) })
		for start < len(items) && key(items[start]) <= p.after {
			start++
		}
	}
	end := min(start+p.limit, len(items))
	next := ""
	if end < len(items) {
		next = base64.RawURLEncoding.EncodeToString([]byte(key(items[end-1])))
	}
	return items[start:end], next
}

// newestFirst is a key that sorts later times first, ties by id.
func newestFirst(at time.Time, id string) string {
	return fmt.Sprintf("%019d/%s", math.MaxInt64-max(at.UnixNano(), 0), id)
}
