package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

func TestNamespaces(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.Namespaces = []string{"/", "/chat"} })
	sub, _ := st.nc.SubscribeSync("sb.in.say")
	_ = st.nc.Flush()
	tok := st.token("wes")
	w, _ := st.mustConnect("wes", "token="+tok)
	// With and without the trailing comma.
	w.send(`40/chat,{"token":"` + tok + `"}`)
	if got := w.expect("40/chat,"); !strings.HasPrefix(got, `40/chat,{"sid":"`) {
		t.Fatalf("connect /chat: %q", got)
	}
	w.send(`42/chat,["say","hi"]`)
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil || m.Header.Get("Sb-Namespace") != "/chat" || string(m.Data) != `["hi"]` {
		t.Fatalf("namespaced event: %v %v", m, err)
	}
	// Unknown namespace.
	w.send(`40/nope`)
	if got := w.expect("44/nope"); got != `44/nope,{"message":"Invalid namespace"}` {
		t.Fatalf("unknown namespace: %q", got)
	}
	// A user delivery reaches both namespaces of the engine.
	must(t, client.New(st.nc).NotifyUser("wes", "note", 1))
	got := map[string]bool{}
	for len(got) < 2 {
		s := w.read()
		if strings.Contains(s, `"note"`) {
			got[s] = true
		}
	}
	if !got[`42["note",1]`] || !got[`42/chat,["note",1]`] {
		t.Fatalf("deliveries %v", got)
	}
	// DISCONNECT of /chat leaves the engine and / up.
	w.send(`41/chat,`)
	eventually(t, 2*time.Second, func() bool { return len(st.presenceList("wes")) == 1 }, "/chat slot released")
	w.send(`42["say","still"]`)
	if m, err := sub.NextMsg(2 * time.Second); err != nil || string(m.Data) != `["still"]` {
		t.Fatalf("event on / after /chat left: %v %v", m, err)
	}
	// Reconnecting /chat without the trailing comma (token from the
	// handshake query) works on the same engine.
	w.send(`40/chat`)
	if got := w.expect("40/chat,"); !strings.HasPrefix(got, `40/chat,{"sid":"`) {
		t.Fatalf("reconnect /chat: %q", got)
	}
}
