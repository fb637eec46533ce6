package gateway

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

func TestAuthCache(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	long := api.VerifyReply{UserID: "alice", Expires: now.Add(time.Hour)}
	short := api.VerifyReply{UserID: "bob", Expires: now.Add(10 * time.Second)}
	for _, tc := range []struct {
		name  string
		id    api.VerifyReply
		after time.Duration
		hit   bool
	}{
		{"fresh", long, 0, true},
		{"within the ttl", long, 29 * time.Second, true},
		{"past the ttl", long, 30 * time.Second, false},
		{"within the token's life", short, 9 * time.Second, true},
		{"past the token's expiry, within the ttl", short, 10 * time.Second, false},
		{"no expiry: the ttl", api.VerifyReply{UserID: "carol"}, 29 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newAuthCache(10, 30*time.Second)
			c.put(hashToken("tok"), tc.id, now)
			got, ok := c.get(hashToken("tok"), now.Add(tc.after))
			if ok != tc.hit || (ok && !reflect.DeepEqual(got, tc.id)) {
				t.Fatalf("get = %+v, %v; want hit %v", got, ok, tc.hit)
			}
			if _, ok := c.get(hashToken("other"), now); ok {
				t.Fatal("another token hit")
			}
		})
	}
	t.Run("expired token not kept", func(t *testing.T) {
		c := newAuthCache(10, time.Minute)
		c.put(hashToken("tok"), api.VerifyReply{UserID: "x", Expires: now.Add(-time.Second)}, now)
		if c.len() != 0 {
			t.Fatal("an expired identity was kept")
		}
	})
	t.Run("bound", func(t *testing.T) {
		c := newAuthCache(100, time.Minute)
		for i := range 1000 {
			c.put(hashToken("tok"+strconv.Itoa(i)), long, now)
		}
		if n := c.len(); n != 100 {
			t.Fatalf("%d entries, want the bound 100", n)
		}
		if _, ok := c.get(hashToken("tok999"), now); !ok {
			t.Fatal("the newest entry was evicted")
		}
	})
	t.Run("off", func(t *testing.T) {
		for _, c := range []*authCache{newAuthCache(0, time.Minute), newAuthCache(10, 0)} {
			c.put(hashToken("tok"), long, now)
			if _, ok := c.get(hashToken("tok"), now); ok || c.len() != 0 {
				t.Fatal("a disabled cache remembered")
			}
		}
	})
}

// A client reconnecting with the token it connected with is admitted
// without asking auth; a new token still is asked, and with the cache off
// every token is.
func TestAuthCacheSkipsVerify(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(strconv.FormatBool(on), func(t *testing.T) {
			st := newStack(t, func(c *Config, _ *presencesvc.Config) {
				if !on {
					c.AuthCacheSize = 0
				}
			})
			var asked atomic.Int64
			sub, err := st.nc.Subscribe(subject.AuthVerify, func(*nats.Msg) { asked.Add(1) })
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sub.Unsubscribe() })
			if err := st.nc.Flush(); err != nil {
				t.Fatal(err)
			}
			tok := st.token("alice")
			for i := range 3 {
				w := st.dial("", nil)
				if reply := w.connect(fmt.Sprintf(`{"token":%q}`, tok)); !strings.HasPrefix(reply, "40{") {
					t.Fatalf("connect %d: %q", i, reply)
				}
				_ = w.c.Close()
			}
			_ = st.nc.Flush()
			want := int64(1)
			if !on {
				want = 3
			}
			if n := asked.Load(); n != want {
				t.Fatalf("auth asked %d times for one token connecting 3 times, want %d", n, want)
			}
			// Auth gone: the remembered token still connects, a new one is
			// refused as unavailable.
			_ = st.auth.Stop()
			w := st.dial("", nil)
			reply := w.connect(fmt.Sprintf(`{"token":%q}`, tok))
			if on != strings.HasPrefix(reply, "40{") {
				t.Fatalf("remembered token with auth down: %q", reply)
			}
			w = st.dial("", nil)
			if reply := w.connect(fmt.Sprintf(`{"token":%q}`, st.token("bob"))); reply != `44{"message":"Service unavailable"}` {
				t.Fatalf("new token with auth down: %q", reply)
			}
		})
	}
}
