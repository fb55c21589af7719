package stackctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/stackpro/stackpro/shared/buildinfo"
)

// client calls dashboard-api with a bearer token.
type client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// apiError is an answer of dashboard-api other than 2xx: its problem
// document's title and detail, and the request id to find it in the logs.
type apiError struct {
	Method, Path  string
	Status        int
	Title, Detail string
	RequestID     string
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Status, e.Title)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.RequestID != "" {
		msg += " (request id " + e.RequestID + ")"
	}
	return msg
}

func (e *apiError) exitCode() int {
	switch e.Status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return ExitUsage
	case http.StatusUnauthorized, http.StatusForbidden:
		return ExitAuth
	case http.StatusNotFound:
		return ExitNotFound
	}
	return ExitFailure
}

// maxResponse bounds what stackctl reads of one answer.
const maxResponse = 16 << 20

// do sends method path?query with body (JSON, none if nil) and decodes a
// 2xx answer into out (unless nil). Any other answer is an *apiError.
func (c *client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := c.base.JoinPath(path)
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "stackctl/"+buildinfo.Version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		return err // *url.Error names the method and URL; the URL holds no secret
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if res.StatusCode/100 != 2 {
		return answerError(req, res, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// answerError reads a non-2xx answer: a problem document, or whatever
// a proxy on the way answered.
func answerError(req *http.Request, res *http.Response, data []byte) *apiError {
	e := &apiError{Method: req.Method, Path: req.URL.Path, Status: res.StatusCode,
		Title: http.StatusText(res.StatusCode), RequestID: res.Header.Get("X-Request-Id")}
	var p struct {
		Title     string `json:"title"`
		Detail    string `json:"detail"`
		RequestID string `json:"request_id"`
	}
	mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	switch {
	case (mt == "application/problem+json" || mt == "application/json") && json.Unmarshal(data, &p) == nil:
		if p.Title != "" {
			e.Title = p.Title
		}
		e.Detail = p.Detail
		if e.RequestID == "" {
			e.RequestID = p.RequestID
		}
	case len(data) > 0:
		e.Detail = strings.TrimSpace(string(data[:min(len(data), 200)]))
	}
	return e
}

// pageOf is a paged list's answer: its items under key, and next_cursor.
func pageOf[T any](data map[string]json.RawMessage, key string) ([]T, string, error) {
	var items []T
	var next string
	if err := json.Unmarshal(data[key], &items); err != nil {
		return nil, "", fmt.Errorf("decoding the %s of a page: %w", key, err)
	}
	if raw, ok := data["next_cursor"]; ok {
		if err := json.Unmarshal(raw, &next); err != nil {
			return nil, "", fmt.Errorf("decoding next_cursor: %w", err)
		}
	}
	return items, next, nil
}

// list reads the pages of path (whose items are under key) until the last
// or until it holds max items (0: no bound).
func list[T any](ctx context.Context, c *client, path, key string, query url.Values, max int) ([]T, error) {
	query = maps.Clone(query)
	if query == nil {
		query = url.Values{}
	}
	var all []T
	for {
		limit := pageLimit
		if max > 0 {
			limit = min(max-len(all), pageLimit)
		}
		query.Set("limit", strconv.Itoa(limit))
		var page map[string]json.RawMessage
		if err := c.do(ctx, http.MethodGet, path, query, nil, &page); err != nil {
			return nil, err
		}
		items, next, err := pageOf[T](page, key)
		if err != nil {
			return nil, fmt.Errorf("GET %s: %w", path, err)
		}
		all = append(all, items...)
		if next == "" || max > 0 && len(all) >= max {
			return all, nil
		}
		query.Set("cursor", next)
	}
}

// pageLimit is the largest page dashboard-api serves.
const pageLimit = 500
