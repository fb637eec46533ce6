package gateway

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

func TestCredentials(t *testing.T) {
	cases := []struct {
		name   string
		c      credentials
		token  string
		errMsg string
	}{
		{"nothing", credentials{allowQuery: true}, "", msgNoToken},
		{"raw auth", credentials{authToken: json.RawMessage(`"abc"`)}, "abc", ""},
		{"bearer auth", credentials{authToken: json.RawMessage(`"Bearer abc"`)}, "abc", ""},
		{"padded", credentials{authToken: json.RawMessage(`"  Bearer   abc  "`)}, "abc", ""},
		{"basic", credentials{authToken: json.RawMessage(`"Basic abc"`)}, "", msgBadScheme},
		{"lower bearer", credentials{authToken: json.RawMessage(`"bearer abc"`)}, "", msgBadScheme},
		{"bearer only", credentials{authToken: json.RawMessage(`"Bearer"`)}, "", msgNoToken},
		{"bearer empty", credentials{authToken: json.RawMessage(`"Bearer  "`)}, "", msgNoToken},
		{"number", credentials{authToken: json.RawMessage(`1`)}, "", msgUnauthorized},
		{"array", credentials{authToken: json.RawMessage(`["a"]`)}, "", msgUnauthorized},
		{"null falls through", credentials{authToken: json.RawMessage(`null`), header: "Bearer h"}, "h", ""},
		{"empty falls through", credentials{authToken: json.RawMessage(`""`), header: "Bearer h"}, "h", ""},
		{"header", credentials{header: "Bearer h"}, "h", ""},
		{"query", credentials{query: "q", allowQuery: true}, "q", ""},
		{"query off", credentials{query: "q"}, "", msgNoToken},
		{"auth first", credentials{authToken: json.RawMessage(`"a"`), header: "Bearer h", query: "q", allowQuery: true}, "a", ""},
		{"two words", credentials{authToken: json.RawMessage(`"Bearer a b"`)}, "", msgUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, msg := tc.c.token()
			if tok != tc.token || msg != tc.errMsg {
				t.Fatalf("got (%q, %q), want (%q, %q)", tok, msg, tc.token, tc.errMsg)
			}
		})
	}
}

func TestDeviceID(t *testing.T) {
	cases := []struct {
		name  string
		query []string
		auth  string
		want  string
		ok    bool
	}{
		{"default to socket", nil, "", "SOCKET", true},
		{"query", []string{"phone-1"}, "", "phone-1", true},
		{"query wins", []string{"q"}, `"a"`, "q", true},
		{"auth", nil, `"tab.2:x_y"`, "tab.2:x_y", true},
		{"max length", []string{strings.Repeat("a", 128)}, "", strings.Repeat("a", 128), true},
		{"too long", []string{strings.Repeat("a", 129)}, "", "", false},
		{"empty query", []string{""}, "", "", false},
		{"slash", []string{"a/b"}, "", "", false},
		{"unicode", []string{"é"}, "", "", false},
		{"wildcard", []string{"*"}, "", "", false},
		{"auth number", nil, `12`, "", false},
		{"auth null", nil, `null`, "SOCKET", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var auth json.RawMessage
			if tc.auth != "" {
				auth = json.RawMessage(tc.auth)
			}
			got, ok := deviceID(tc.query, auth, "SOCKET")
			if ok != tc.ok || (ok && got != tc.want) {
				t.Fatalf("got (%q, %v), want (%q, %v)", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestOriginChecker(t *testing.T) {
	c := newOriginChecker([]string{"https://app.example.com", "http://localhost:*", "HTTPS://Upper.Example.com/"})
	cases := []struct {
		origin, host string
		ok           bool
	}{
		{"", "gw", true},
		{"https://app.example.com", "gw", true},
		{"https://app.example.com:443", "gw", false},
		{"http://app.example.com", "gw", false},
		{"https://upper.example.com", "gw", true},
		{"http://localhost:19006", "gw", true},
		{"http://localhost", "gw", false},
		{"http://localhost:1:2", "gw", false},
		{"http://localhost.evil.com:80", "gw", false},
		{"https://gw.example.com", "gw.example.com", true}, // same origin
		{"null", "gw", false},
		{"https://evil.com", "gw", false},
	}
	for _, tc := range cases {
		r := httptest.NewRequest("GET", "http://"+tc.host+"/socket.io/", nil)
		r.Host = tc.host
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		if got := c.allow(r); got != tc.ok {
			t.Errorf("origin %q host %q: %v, want %v", tc.origin, tc.host, got, tc.ok)
		}
	}
	if !newOriginChecker([]string{"*"}).allow(httptest.NewRequest("GET", "http://x/", nil)) {
		t.Error("* must allow")
	}
}

func TestDeliveryArgs(t *testing.T) {
	cases := map[string]string{"": "[]", "  ": "[]", `"x"`: `["x"]`, `{"a":1}`: `[{"a":1}]`, `[1,2]`: `[[1,2]]`, "hello": `["hello"]`, "{bad": `["{bad"]`}
	for in, want := range cases {
		got := "[" + strings.Join(func() []string {
			var out []string
			for _, a := range deliveryArgs([]byte(in)) {
				out = append(out, string(a))
			}
			return out
		}(), ",") + "]"
		if got != want {
			t.Errorf("deliveryArgs(%q) = %s, want %s", in, got, want)
		}
	}
}

// A page of sockets for presence stays within its byte budget whatever the
// sockets' claims, and the next page goes on where it stopped.
func TestSocketsPageBytes(t *testing.T) {
	h := &hub{sockets: map[string]*socket{}}
	claims := json.RawMessage(`{"tenant":"` + strings.Repeat("t", 4000) + `"}`)
	for i := range 200 {
		id := fmt.Sprintf("s%03d", i)
		h.sockets[id] = &socket{id: id, conn: api.Conn{SocketID: id, UserID: "u", Gateway: "g", Claims: claims}}
	}
	var all []api.Conn
	after, pages := "", 0
	for {
		conns, more := h.page(after, maxSocketsPage)
		pages++
		b, err := json.Marshal(api.GatewaySocketsReply{Conns: conns, More: more})
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > maxSocketsPageBytes {
			t.Fatalf("page %d is %d bytes, over %d", pages, len(b), maxSocketsPageBytes)
		}
		all = append(all, conns...)
		if !more {
			break
		}
		after = conns[len(conns)-1].SocketID
	}
	if len(all) != 200 || pages < 4 {
		t.Fatalf("%d sockets in %d pages, want 200 in at least 4", len(all), pages)
	}
}
