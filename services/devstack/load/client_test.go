package load

import (
	"testing"
)

func TestSplitEvent(t *testing.T) {
	for _, tc := range []struct {
		in, name, arg string
		ok            bool
	}{
		{`["tick",{"timer":5}]`, "tick", `{"timer":5}`, true},
		{`["timerDone",{"timer":0},"x"]`, "timerDone", `{"timer":0},"x"`, true},
		{`["bare"]`, "bare", "", true},
		{`["n",1]`, "n", "1", true},
		{`[]`, "", "", false},
		{`["unterminated`, "", "", false},
		{`["x"1]`, "", "", false},
		{`{"a":1}`, "", "", false},
		{``, "", "", false},
	} {
		name, arg, ok := splitEvent([]byte(tc.in))
		if ok != tc.ok || name != tc.name || string(arg) != tc.arg {
			t.Errorf("splitEvent(%q) = %q, %q, %v; want %q, %q, %v", tc.in, name, arg, ok, tc.name, tc.arg, tc.ok)
		}
	}
}

func TestWSURL(t *testing.T) {
	for _, tc := range []struct{ in, dev, want string }{
		{"http://127.0.0.1:3000", "d", "ws://127.0.0.1:3000/socket.io/?EIO=4&deviceId=d&transport=websocket"},
		{"https://example.com/", "", "wss://example.com/socket.io/?EIO=4&transport=websocket"},
		{"ws://h/custom/", "", "ws://h/custom/?EIO=4&transport=websocket"},
	} {
		got, err := wsURL(tc.in, tc.dev)
		if err != nil || got != tc.want {
			t.Errorf("wsURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := wsURL("ftp://x", ""); err == nil {
		t.Error("ftp accepted")
	}
}

func TestEventFrame(t *testing.T) {
	if got := string(eventFrame("timerStart", []byte(`{"dur":3}`))); got != `42["timerStart",{"dur":3}]` {
		t.Errorf("frame %s", got)
	}
	if got := string(eventFrame("timerStop", nil)); got != `42["timerStop"]` {
		t.Errorf("frame %s", got)
	}
}
