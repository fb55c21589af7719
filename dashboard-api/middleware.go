package dashboardapi

import (
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-chi/cors"
	"github.com/prometheus/client_golang/prometheus"
)

// requestID echoes chi's request id in the X-Request-Id response header.
func (a *API) requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", middleware.GetReqID(r.Context()))
		next.ServeHTTP(w, r)
	})
}

// corsFor lets the frontend at origins call the API from a browser: bearer
// tokens, no cookies.
func corsFor(origins []string) func(http.Handler) http.Handler {
	return cors.Handler(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete},
		AllowedHeaders: []string{"Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"},
		ExposedHeaders: []string{"X-Request-Id", "Location", "Retry-After"},
		MaxAge:         600,
	})
}

// httpMetrics measures requests by route pattern, method and status code.
type httpMetrics struct {
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) (*httpMetrics, error) {
	m := &httpMetrics{duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "stackpro_http_request_duration_seconds",
		Help:    "Time to answer an HTTP request of dashboard-api, by route pattern, method and status code; event streams are left out.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"route", "method", "code"})}
	if reg == nil {
		return m, nil
	}
	return m, reg.Register(m.duration)
}

// observe logs each request with its id and measures it. Successful reads
// are logged at debug level, everything else at info.
func (a *API) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		took := time.Since(start)
		if route != "/api/v1/events" {
			a.metrics.duration.WithLabelValues(route, r.Method, strconv.Itoa(ww.Status())).Observe(took.Seconds())
		}
		level := slog.LevelInfo
		if r.Method == http.MethodGet && ww.Status() < 400 {
			level = slog.LevelDebug
		}
		a.log.Log(r.Context(), level, "request", "method", r.Method, "route", route, "status", ww.Status(),
			"bytes", ww.BytesWritten(), "took", took, "request_id", middleware.GetReqID(r.Context()))
	})
}
