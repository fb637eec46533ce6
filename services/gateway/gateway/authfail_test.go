package gateway

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

// When auth is down, slow or failing, a CONNECT and a refreshToken are
// answered "Service unavailable", never "Unauthorized": the token may be
// fine, and clients retry on that message. A refusal stays a refusal.
func TestAuthFailureModes(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.RequestTimeout = 500 * time.Millisecond
		c.AuthCacheSize = 0 // every token goes to auth
	})
	w, _ := st.mustConnect("ivy", "")
	must(t, st.auth.Stop())

	answer := func(t *testing.T, how string) {
		t.Helper()
		sub, err := st.nc.Subscribe(subject.AuthVerify, func(m *nats.Msg) {
			r := nats.NewMsg(m.Reply)
			switch how {
			case "slow":
				time.Sleep(time.Second)
				r.Data = []byte(`{"uid":"ivy","exp":"2099-01-01T00:00:00Z"}`)
			case "internal":
				r.Header.Set(micro.ErrorCodeHeader, "500")
				r.Header.Set(micro.ErrorHeader, "internal error")
			case "refused":
				r.Header.Set(micro.ErrorCodeHeader, strconv.Itoa(401))
				r.Header.Set(micro.ErrorHeader, "Unauthorized")
			}
			_ = m.RespondMsg(r)
		})
		must(t, err)
		t.Cleanup(func() { _ = sub.Unsubscribe(); _ = st.nc.Flush() })
		must(t, st.nc.Flush())
	}
	for i, tc := range []struct {
		how, want string
	}{
		{"down", "Service unavailable"},
		{"slow", "Service unavailable"},
		{"internal", "Service unavailable"},
		{"refused", "Unauthorized"},
	} {
		t.Run(tc.how, func(t *testing.T) {
			if tc.how != "down" {
				answer(t, tc.how)
			}
			tok := mint(t, "ivy", time.Duration(i+2)*time.Hour, nil)
			c := st.dial("", nil)
			if got := c.connect(fmt.Sprintf(`{"token":%q}`, tok)); got != `44{"message":"`+tc.want+`"}` {
				t.Fatalf("connect: %q, want %s", got, tc.want)
			}
			w.send(fmt.Sprintf(`427["refreshToken",{"token":%q}]`, tok))
			if got := w.expect("437"); got != `437[{"status":"error","message":"`+tc.want+`"}]` {
				t.Fatalf("refresh: %q, want %s", got, tc.want)
			}
		})
	}
}
