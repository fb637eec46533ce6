// Package opstest reads a service's operations listener in tests.
package opstest

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Scrape returns the text of /metrics at addr (host:port).
func Scrape(t testing.TB, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %v %s", err, resp.Status)
	}
	return string(b)
}

// Value is the value of one series in a scrape, written as in the text
// format (`name{label="v"}`), or -1 when the scrape lacks it.
func Value(text, series string) float64 {
	for line := range strings.SplitSeq(text, "\n") {
		rest, ok := strings.CutPrefix(line, series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			return -1
		}
		return v
	}
	return -1
}

// Status is the HTTP status of path (/healthz, /readyz) at addr, 0 when
// nothing answers.
func Status(addr, path string) int {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
