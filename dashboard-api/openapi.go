package dashboardapi

import (
	_ "embed"
	"net/http"
)

// openapiDoc is the OpenAPI 3.1 document of every route, written by hand
// to match the code; TestResponsesMatchOpenAPI holds it to the real answers.
//
//go:embed openapi.json
var openapiDoc []byte

// openapi serves the OpenAPI document.
func (a *API) openapi(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, err := w.Write(openapiDoc)
	return err
}
